"""A record whose output its topic cannot take is poison for that record, not a transient failure (issue 19): the
runtime finds it before sending, or from the broker's refusal, and retries the batch at once with it dead-lettered
as OUTPUT_TOO_LARGE, its sender told."""

import asyncio
import json

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from schemas.errors import ErrorCode, ReferralError
from services.infra import topics
from services.infra.kafka import OUTBOUND_RECORD_BYTES, Outbound, outbound
from services.infra.processing import Owned, Processor, Refused, Runtime
from services.infra.settings import Settings


class Echo(Processor):
    """Writes each input `size` times over to `echo.out`; tells the sender of a refused record on `told.v1`."""

    service = "size-test"
    inputs = "echo"

    async def handle(self, record: ConsumerRecord) -> list[Outbound]:
        return [outbound("echo.out", record.value * int(record.key), record.key, schema="test/1")]

    def refused(self, record: ConsumerRecord, errors: list[ReferralError]) -> list[Outbound]:
        return [outbound("told.v1", json.dumps([e.code.value for e in errors]).encode(), record.key, schema="t/1")]


def record(value: bytes, times: int, offset: int = 7) -> ConsumerRecord:
    return ConsumerRecord(topic="echo", partition=0, offset=offset, timestamp=0, timestamp_type=0,
                          key=str(times).encode(), value=value, checksum=None, serialized_key_size=1, serialized_value_size=len(value),
                          headers=())


def runtime() -> Runtime:
    return Runtime(Echo(), Settings(_env_file=None), kafka=object())  # type: ignore[arg-type]  # never connects


def test_an_output_over_its_topics_limit_is_found_before_sending_and_dead_lettered_on_the_retry() -> None:
    run, owned = runtime(), Owned(producer=None)  # type: ignore[arg-type]
    big = record(b"x" * 1024, OUTBOUND_RECORD_BYTES // 1024 + 1)
    with pytest.raises(Refused):
        asyncio.run(run.handle(owned, big))
    assert owned.poison == {("echo", 7): [ReferralError(code=ErrorCode.OUTPUT_TOO_LARGE, location="", message=(
        "What the hub would write for this record is larger than its topic takes."))]}
    letter, told = asyncio.run(run.handle(owned, big))
    assert letter.topic == topics.DEAD_LETTERS and letter.value == big.value
    assert json.loads(letter.headers["errors"])[0]["code"] == "OUTPUT_TOO_LARGE"
    assert (told.topic, json.loads(told.value)) == ("told.v1", ["OUTPUT_TOO_LARGE"])
    assert asyncio.run(run.handle(owned, big))[0].topic == topics.DEAD_LETTERS  # until its batch commits


def test_an_output_just_under_the_limit_is_sent() -> None:
    (out,) = asyncio.run(runtime().handle(Owned(producer=None), record(b"x" * 1024, 1000)))  # type: ignore[arg-type]
    assert out.topic == "echo.out"


def test_a_broker_refusal_names_the_input_whose_output_it_refused() -> None:
    run, owned = runtime(), Owned(producer=None)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    small, refused = loop.create_future(), loop.create_future()
    small.set_result(None)
    refused.set_exception(MessageSizeTooLargeError())
    given = [(record(b"a", 1, offset=1), outbound("echo.out", b"a", b"1", schema="t")),
             (record(b"b", 1, offset=2), outbound("echo.out", b"b", b"1", schema="t"))]
    sent = [(output, delivery) for (_, output), delivery in zip(given, (small, refused), strict=True)]
    assert run.too_large(owned, given, sent)
    assert list(owned.poison) == [("echo", 2)]
    assert owned.poison[("echo", 2)][0].code is ErrorCode.OUTPUT_TOO_LARGE
    loop.close()


def test_a_refusal_no_delivery_names_puts_aside_the_input_of_the_largest_output() -> None:
    """aiokafka refuses a record over `max_request_size` in `send` itself: no delivery for it."""
    run, owned = runtime(), Owned(producer=None)  # type: ignore[arg-type]
    given = [(record(b"a", 1, offset=1), outbound("echo.out", b"a" * 10, b"1", schema="t")),
             (record(b"b", 1, offset=2), outbound("echo.out", b"b" * 1000, b"1", schema="t")),
             (record(b"c", 1, offset=3), outbound("echo.out", b"c" * 100, b"1", schema="t"))]
    assert run.too_large(owned, given, [])
    assert list(owned.poison) == [("echo", 2)]


class _Producer:
    """Enough of a transactional producer for `_commit`: every record it sends fails as `error`."""

    def __init__(self, error: Exception) -> None:
        self.error, self.aborted, self.committed = error, False, False

    async def begin_transaction(self) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def abort_transaction(self) -> None:
        self.aborted = True

    async def commit_transaction(self) -> None:
        self.committed = True


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), KafkaConnectionError()])
def test_a_transaction_with_a_refused_record_is_aborted_not_committed(error: Exception) -> None:
    """aiokafka would commit it: the input's offset without its output."""
    producer = _Producer(error)

    async def body(_producer):
        delivery = asyncio.get_running_loop().create_future()
        delivery.set_exception(error)
        return [(outbound("echo.out", b"x", b"1", schema="t"), delivery)]

    with pytest.raises(type(error)):
        asyncio.run(runtime()._commit(producer, body))  # type: ignore[arg-type]
    assert producer.aborted and not producer.committed


def test_a_dead_letter_too_large_for_its_topic_is_written_without_its_value() -> None:
    run, owned = runtime(), Owned(producer=None)  # type: ignore[arg-type]
    huge = record(b"x" * (run.settings.max_message_bytes + 200 * 1024), 1)
    owned.poison[("echo", 7)] = [ReferralError(code=ErrorCode.OUTPUT_TOO_LARGE, location="", message="m")]
    letter, _told = asyncio.run(run.handle(owned, huge))
    assert (letter.topic, letter.value, letter.headers["value-dropped"]) == (topics.DEAD_LETTERS, b"", "too large")
    assert not run.too_large(owned, [(huge, letter)], [])  # refused again all the same: backoff, no hot loop
