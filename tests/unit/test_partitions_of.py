"""`partitions_of` asks again after a retriable error and gives up at once on any other (services/infra/kafka.py)."""

import pytest
from aiokafka.errors import NodeNotReadyError, TopicAuthorizationFailedError

from services.infra import kafka as kafka_module
from services.infra.connection import KafkaConnection

DESCRIBED = [{"topic": "registry.v1", "error_code": 0, "partitions": [{"partition": 1}, {"partition": 0}]}]


def admin_answering(*answers: object) -> type:
    """An admin client whose describe_topics raises or returns each of `answers` in turn (one per client made)."""
    pending = list(answers)

    class Admin:
        def __init__(self, **_: object) -> None:
            pass

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def describe_topics(self, names: list[str]) -> object:
            answer = pending.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    Admin.pending = pending
    return Admin


CONNECTION = KafkaConnection("127.0.0.1:1", "PLAINTEXT")


async def test_a_node_not_ready_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = admin_answering(NodeNotReadyError("node id None"), DESCRIBED)
    monkeypatch.setattr(kafka_module, "AIOKafkaAdminClient", admin)
    monkeypatch.setattr(kafka_module, "DESCRIBE_BACKOFF_S", 0.0)
    partitions = await kafka_module.partitions_of(CONNECTION, ["registry.v1"])
    assert [(tp.topic, tp.partition) for tp in partitions] == [("registry.v1", 0), ("registry.v1", 1)]
    assert admin.pending == []


async def test_an_error_that_is_not_retriable_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = admin_answering(TopicAuthorizationFailedError(), DESCRIBED)
    monkeypatch.setattr(kafka_module, "AIOKafkaAdminClient", admin)
    with pytest.raises(TopicAuthorizationFailedError):
        await kafka_module.partitions_of(CONNECTION, ["registry.v1"])
    assert admin.pending == [DESCRIBED]


async def test_a_node_never_ready_is_raised_after_the_last_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = admin_answering(*[NodeNotReadyError("node id None")] * kafka_module.DESCRIBE_ATTEMPTS, DESCRIBED)
    monkeypatch.setattr(kafka_module, "AIOKafkaAdminClient", admin)
    monkeypatch.setattr(kafka_module, "DESCRIBE_BACKOFF_S", 0.0)
    with pytest.raises(NodeNotReadyError):
        await kafka_module.partitions_of(CONNECTION, ["registry.v1"])
    assert admin.pending == [DESCRIBED]
