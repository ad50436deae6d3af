"""The broker side of access: SCRAM users and ACL bindings, through confluent-kafka's AdminClient.

aiokafka has no AlterUserScramCredentials and no ACL calls; Kafka's own tools have them but start one JVM
per user or resource (seconds each). confluent-kafka (librdkafka) has both, in one connection.
"""

import time
from collections.abc import Callable

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from services.access.matrix import Grant, Operation, Pattern, Resource
from services.infra.connection import KafkaConnection
from services.infra.provisioning import failures

SCRAM_ITERATIONS = 8192
RESOURCES = {Resource.TOPIC: ResourceType.TOPIC, Resource.GROUP: ResourceType.GROUP,
             Resource.TRANSACTIONAL_ID: ResourceType.TRANSACTIONAL_ID}
PATTERNS = {Pattern.LITERAL: ResourcePatternType.LITERAL, Pattern.PREFIXED: ResourcePatternType.PREFIXED}
OPERATIONS = {Operation.READ: AclOperation.READ, Operation.WRITE: AclOperation.WRITE,
              Operation.DESCRIBE: AclOperation.DESCRIBE, Operation.DESCRIBE_CONFIGS: AclOperation.DESCRIBE_CONFIGS}
TIMEOUT_S = 90.0


class AccessError(RuntimeError):
    """The broker refused or did not answer an access change."""


def _binding(grant: Grant, kind: type[AclBinding] | type[AclBindingFilter] = AclBinding):
    return kind(RESOURCES[grant.resource], grant.name, PATTERNS[grant.pattern], f"User:{grant.principal}",
                "*", OPERATIONS[grant.operation], AclPermissionType.ALLOW)


def _grant(binding: AclBinding) -> Grant | None:
    """A binding as a Grant, or None for one the matrix never makes (another tool's ACL)."""
    resources = {v: k for k, v in RESOURCES.items()}
    patterns = {v: k for k, v in PATTERNS.items()}
    operations = {v: k for k, v in OPERATIONS.items()}
    if (binding.permission_type != AclPermissionType.ALLOW or binding.host != "*"
            or not binding.principal.startswith("User:") or binding.restype not in resources
            or binding.resource_pattern_type not in patterns or binding.operation not in operations):
        return None
    return Grant(binding.principal.removeprefix("User:"), resources[binding.restype],
                 patterns[binding.resource_pattern_type], binding.name, operations[binding.operation])


def _wait(futures: dict) -> None:
    if failed := failures(futures):
        raise AccessError("; ".join(failed))


class AccessAdmin:
    def __init__(self, kafka: KafkaConnection) -> None:
        self.client = AdminClient({**kafka.librdkafka(), "client.id": "verwijshub-access", "log_level": 3})

    def scram_users(self) -> set[str]:
        try:
            described = self.client.describe_user_scram_credentials().result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            raise AccessError(f"SCRAM users not described: {exc}") from exc
        return set(described)

    def set_passwords(self, passwords: dict[str, str]) -> None:
        if passwords:
            info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
            _wait(self.client.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(user, info, password.encode()) for user, password in passwords.items()]))

    def delete_users(self, users: set[str]) -> None:
        if users:
            _wait(self.client.alter_user_scram_credentials(
                [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512) for user in sorted(users)]))

    def grants(self) -> set[Grant]:
        """Every ALLOW binding on the cluster that the matrix could have made."""
        everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                      AclOperation.ANY, AclPermissionType.ANY)
        try:
            bindings = self.client.describe_acls(everything).result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            raise AccessError(f"ACLs not described: {exc}") from exc
        return {grant for binding in bindings if (grant := _grant(binding)) is not None}

    @staticmethod
    def settle(applied: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
        """Wait until the broker enforces what was just changed: a change is committed by the controller at
        once but reaches the broker's caches through the metadata log, seconds later after a burst of topic
        creations, and a client that connected meanwhile would be refused."""
        deadline = time.monotonic() + timeout_s
        while not applied():
            if time.monotonic() > deadline:
                raise AccessError("the broker did not apply the access changes in time")
            time.sleep(0.2)

    def add(self, grants: set[Grant]) -> None:
        if grants:
            _wait(self.client.create_acls([_binding(g) for g in sorted(grants)]))

    def remove(self, grants: set[Grant]) -> None:
        if grants:
            _wait(self.client.delete_acls([_binding(g, AclBindingFilter) for g in sorted(grants)]))
