"""A record whose output its topic cannot take is poison for that record, not a transient failure (issue 19): the
runtime finds it before sending, or from the broker's refusal, and retries the batch at once with it dead-lettered
as OUTPUT_TOO_LARGE, its sender told."""

import asyncio
import json

import pytest
from confluent_kafka import KafkaError, KafkaException

from schemas.errors import ErrorCode, ReferralError
from services.infra import topics
from services.infra.kafka import OUTBOUND_RECORD_BYTES, Outbound, Record, outbound
from services.infra.librdkafka import Delivery, Transactions, resumed
from services.infra.processing import Given, Processor, Refused, Runtime
from services.infra.settings import Settings


class Echo(Processor):
    """Writes each input `size` times over to `echo.out`; tells the sender of a refused record on `told.v1`."""

    service = "size-test"
    inputs = "echo"

    async def handle(self, record: Record) -> list[Outbound]:
        return [outbound("echo.out", record.value * int(record.key), record.key, schema="test/1")]

    def refused(self, record: Record, errors: list[ReferralError]) -> list[Outbound]:
        return [outbound("told.v1", json.dumps([e.code.value for e in errors]).encode(), record.key, schema="t/1")]


def record(value: bytes, times: int, offset: int = 7) -> Record:
    return Record("echo", 0, offset, 0, str(times).encode(), value)


def runtime() -> Runtime:
    return Runtime(Echo(), Settings(_env_file=None), kafka=object())  # type: ignore[arg-type]  # never connects


def too_large() -> KafkaError:
    return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")


def test_an_output_over_its_topics_limit_is_found_before_sending_and_dead_lettered_on_the_retry() -> None:
    run = runtime()
    big = record(b"x" * 1024, OUTBOUND_RECORD_BYTES // 1024 + 1)
    with pytest.raises(Refused):
        asyncio.run(run.handle(big))
    assert run.poison == {("echo", 0, 7): [ReferralError(code=ErrorCode.OUTPUT_TOO_LARGE, location="", message=(
        "What the hub would write for this record is larger than its topic takes."))]}
    letter, told = asyncio.run(run.handle(big))
    assert letter.topic == topics.DEAD_LETTERS and letter.value == big.value
    assert json.loads(letter.headers["errors"])[0]["code"] == "OUTPUT_TOO_LARGE"
    assert (told.topic, json.loads(told.value)) == ("told.v1", ["OUTPUT_TOO_LARGE"])
    assert asyncio.run(run.handle(big))[0].topic == topics.DEAD_LETTERS  # until its batch commits


def test_an_output_just_under_the_limit_is_sent() -> None:
    (out,) = asyncio.run(runtime().handle(record(b"x" * 1024, 1000)))
    assert out.topic == "echo.out"


def test_a_broker_refusal_names_the_input_whose_output_it_refused() -> None:
    run = runtime()
    given = [Given(0, record(b"a", 1, offset=1), outbound("echo.out", b"a", b"1", schema="t")),
             Given(0, record(b"b", 1, offset=2), outbound("echo.out", b"b", b"1", schema="t"))]
    deliveries = [Delivery(offset=10), Delivery(error=too_large())]
    assert run.too_large(KafkaException(too_large()), given, deliveries)
    assert list(run.poison) == [("echo", 0, 2)]
    assert run.poison[("echo", 0, 2)][0].code is ErrorCode.OUTPUT_TOO_LARGE


def test_a_record_librdkafka_refused_to_queue_is_the_one_after_the_queued_ones() -> None:
    """librdkafka refuses a record over `message.max.bytes` in `produce` itself: no delivery for it."""
    run = runtime()
    given = [Given(0, record(b"a", 1, offset=1), outbound("echo.out", b"a" * 10, b"1", schema="t")),
             Given(0, record(b"b", 1, offset=2), outbound("echo.out", b"b" * 1000, b"1", schema="t")),
             Given(0, record(b"c", 1, offset=3), outbound("echo.out", b"c" * 100, b"1", schema="t"))]
    assert run.too_large(KafkaException(too_large()), given, [Delivery()])
    assert list(run.poison) == [("echo", 0, 2)]


def test_a_transient_failure_puts_no_record_aside() -> None:
    run = runtime()
    given = [Given(0, record(b"a", 1, offset=1), outbound("echo.out", b"a", b"1", schema="t"))]
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "records not delivered in time")
    assert not run.too_large(KafkaException(timed_out), given, [Delivery(error=timed_out)])
    assert not run.poison


def test_a_tick_output_refused_puts_no_input_aside() -> None:
    """A tick's output has no input to dead-letter: retried with backoff (and logged), never a hot loop."""
    run = runtime()
    given = [Given(0, None, outbound("echo.out", b"a", b"1", schema="t"))]
    assert not run.too_large(KafkaException(too_large()), given, [Delivery(error=too_large())])


def test_a_dead_letter_too_large_for_its_topic_is_written_without_its_value() -> None:
    run = runtime()
    huge = record(b"x" * (run.settings.max_message_bytes + 200 * 1024), 1)
    run.poison[("echo", 0, 7)] = [ReferralError(code=ErrorCode.OUTPUT_TOO_LARGE, location="", message="m")]
    letter, _told = asyncio.run(run.handle(huge))
    assert (letter.topic, letter.value, letter.headers["value-dropped"]) == (topics.DEAD_LETTERS, b"", "too large")
    refused = [Given(0, huge, letter)]
    assert not run.too_large(KafkaException(too_large()), refused, [Delivery(error=too_large())])  # backoff, no loop


class _Producer:
    """Enough of a librdkafka producer for `Transactions.commit`: records what was called."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return 0

    def send_offsets_to_transaction(self, offsets, group, timeout: float) -> None:
        self.calls.append("offsets")

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")


@pytest.mark.parametrize("error", [too_large(), KafkaError(KafkaError._TRANSPORT, "broker away")])
def test_a_transaction_with_a_record_not_delivered_sends_no_offsets_and_does_not_commit(error: KafkaError) -> None:
    transactions = Transactions.__new__(Transactions)
    transactions.producer, transactions.timeout_s = _Producer(), 1.0
    with pytest.raises(KafkaException):
        asyncio.run(transactions.commit({("echo", 0): 8}, object(), [Delivery(offset=3), Delivery(error=error)]))
    assert transactions.producer.calls == ["flush"]
    transactions.producer.calls.clear()
    asyncio.run(transactions.commit({("echo", 0): 8}, object(), [Delivery(offset=3)]))
    assert transactions.producer.calls == ["flush", "offsets", "commit"]


def test_a_call_librdkafka_says_may_resume_is_made_again_within_its_bound_and_no_other() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True))
        return "done"

    assert resumed(flaky, 10) == "done" and len(calls) == 3

    def refused() -> None:
        calls.append(1)
        raise KafkaException(too_large())

    calls.clear()
    with pytest.raises(KafkaException):  # not retriable: at once
        resumed(refused, 10)
    assert len(calls) == 1

    def never() -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True))

    with pytest.raises(KafkaException):  # retriable for ever: given up after its bound
        resumed(never, 0.05)
