"""Production export: Strimzi `KafkaUser` and `KafkaTopic` manifests from the same matrix as the local ACLs.

Each principal becomes a KafkaUser with SCRAM-SHA-512 authentication and `simple` authorization carrying
exactly its grants (Strimzi's User Operator then creates the password secret); each topic a KafkaTopic with
the production replication. The admin is the cluster's super user (`Kafka.spec.kafka.authorization.superUsers`)
and gets no ACLs. Pure: manifests in, nothing written here.
"""

from collections import defaultdict
from typing import Any

from services.access.matrix import Grant, Operation, Pattern, Principal, Resource
from services.infra import principals, topics

API = "kafka.strimzi.io/v1beta2"
CLUSTER = "verwijshub"
PRODUCTION_REPLICAS = 3
PRODUCTION_MIN_ISR = "2"


def _labels() -> dict[str, Any]:
    return {"labels": {"strimzi.io/cluster": CLUSTER}}


def kafka_user(principal: Principal, granted: list[Grant]) -> dict[str, Any]:
    grouped: dict[tuple[Resource, Pattern, str], list[str]] = defaultdict(list)
    for grant in sorted(granted):
        grouped[(grant.resource, grant.pattern, grant.name)].append(grant.operation.value)
    spec: dict[str, Any] = {"authentication": {"type": "scram-sha-512"}}
    if principal.name != principals.ADMIN:
        spec["authorization"] = {"type": "simple", "acls": [
            {"resource": {"type": resource.value, "name": name, "patternType": pattern.value},
             "operations": operations, "host": "*"}
            for (resource, pattern, name), operations in grouped.items()]}
    return {"apiVersion": API, "kind": "KafkaUser",
            "metadata": {"name": principal.name, **_labels(), "annotations": {"verwijshub/kind": principal.kind}},
            "spec": spec}


def kafka_topic(name: str, partitions: int) -> dict[str, Any]:
    config = {"min.insync.replicas": PRODUCTION_MIN_ISR}
    if name in topics.COMPACTED:
        config["cleanup.policy"] = "compact"
    return {"apiVersion": API, "kind": "KafkaTopic",
            "metadata": {"name": name.replace(".", "-").replace("_", "-"), **_labels()},
            "spec": {"topicName": name, "partitions": partitions, "replicas": PRODUCTION_REPLICAS, "config": config}}


def manifests(people: list[Principal], granted: list[Grant], topic_names: list[str],
              partitions: int) -> dict[str, dict[str, Any]]:
    """File name -> manifest, one per principal and topic."""
    by_principal: dict[str, list[Grant]] = defaultdict(list)
    for grant in granted:
        by_principal[grant.principal].append(grant)
    files = {f"user-{p.name}.yaml": kafka_user(p, by_principal[p.name]) for p in people}
    files |= {f"topic-{name}.yaml": kafka_topic(name, partitions) for name in topic_names}
    return files


def grants_of(user: dict[str, Any]) -> set[Grant]:
    """What a KafkaUser manifest grants, read back as the matrix's Grants (for the equivalence test)."""
    name = user["metadata"]["name"]
    return {Grant(name, Resource(acl["resource"]["type"]), Pattern(acl["resource"].get("patternType", "literal")),
                  acl["resource"]["name"], operation)
            for acl in user["spec"].get("authorization", {}).get("acls", [])
            for operation in map(Operation, acl["operations"])}
