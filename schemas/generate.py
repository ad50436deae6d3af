"""Generates the published contract files under `schemas/` from the code, so they never drift from it:

- `schemas/json/<name>.schema.json`: JSON Schemas of the gi, ggd and court documents and of the hub's
  own messages, from the pydantic models;
- `schemas/asyncapi.json`: the AsyncAPI 3.0 document of every topic the hub reads or writes, from what each
  service and the admin commands declare (`services/infra/contract.py`) through FastStream, with who may publish
  and subscribe on each channel, the topic families' parameters, the internal topics tagged and the headers of
  what the hub writes;
- `schemas/openapi.json`: the OpenAPI document of the referrer gateway's HTTPS interface, from its FastAPI app
  (the JSON channels' bodies from the same pydantic models);
- `schemas/openapi-recipients.json`: the OpenAPI document of the recipient API (services/recipients/api.py);
- the ACL matrix table in `docs/security.md`, from `services/access/matrix.py`.

`python -m schemas.generate` (or `verwijshub schemas`) writes them; `--check` exits 1 if any committed
file differs from what the code generates (a test runs the same check).
"""

import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.errors import ReferralError
from schemas.feedback import Feedback
from schemas.inbound import CourtReferral, GgdReferral, GiReferral
from schemas.lifecycle import ReferralChange, RoutedChange, Withdrawal
from schemas.notices import RecipientClocks, RecipientNotice
from schemas.recipients import RecipientTasks, Subscription
from schemas.referral import Referral
from schemas.routing import RoutingAlert
from schemas.status import StatusEvent

SCHEMAS_DIR = Path(__file__).resolve().parent
SECURITY_DOC = SCHEMAS_DIR.parent / "docs" / "security.md"
MATRIX_START, MATRIX_END = "<!-- matrix:start -->", "<!-- matrix:end -->"
JSON_SCHEMAS: dict[str, type[BaseModel]] = {
    "gi-referral": GiReferral, "ggd-referral": GgdReferral, "court-referral": CourtReferral,
    "referral": Referral, "status-event": StatusEvent, "referral-error": ReferralError,
    "feedback": Feedback, "recipient-notice": RecipientNotice, "alert": RoutingAlert,
    "recipient-clocks": RecipientClocks, "withdrawal": Withdrawal, "referral-change": ReferralChange,
    "routed-change": RoutedChange, "recipient-tasks": RecipientTasks,
    "recipient-subscription": Subscription,
}
PLACEHOLDER_BOOTSTRAP = "kafka:9092"
"""The server named in the AsyncAPI document: a placeholder, so the file does not depend on this machine."""


def _dump(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def json_schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"urn:verwijshub:schema:{name}",
            **schema}


COMMANDS = "commands"
"""The title prefix of what the admin's commands write (`registry publish`, `indications import`, `dlq`)."""
INTERNAL_TAG = {"name": "internal", "description": "The hub's own state: no outside party reads or writes it."}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI document FastStream generates from the services' and the commands' declarations."""
    from faststream.specification import AsyncAPI

    from services.dlq import store as dlq_store
    from services.hub import SERVICES, create_service
    from services.infra import topics
    from services.infra.clock import SystemClock
    from services.infra.consuming import DEAD_LETTER
    from services.infra.contract import PARAMETER, PARAMETERS, declare
    from services.infra.kafka import make_broker
    from services.infra.processing import Runtime
    from services.infra.registry_files import load_registry
    from services.infra.settings import REPO_ROOT, Settings
    from services.routing import commands as routing_commands

    settings = Settings(kafka_bootstrap=PLACEHOLDER_BOOTSTRAP, kafka_username="<principal>",
                        kafka_password="<password>", pseudonym_key="<not used>", _env_file=None)
    registry = load_registry(REPO_ROOT / "deploy" / "registry")
    services = {name: create_service(name, settings, registry, SystemClock()) for name in SERVICES}
    brokers = [service.specification() if isinstance(service, Runtime) else service for service in services.values()]
    commands = make_broker(settings, COMMANDS)
    declare(commands, COMMANDS, (*routing_commands.WRITES, *dlq_store.WRITES))
    written = {f"{COMMANDS}:{o.name}": o for o in (*routing_commands.WRITES, *dlq_store.WRITES)}
    for name, service in services.items():
        if isinstance(service, Runtime):
            written |= {f"{name}:{o.name}": o for o in (*service.processor.writes, DEAD_LETTER)}
    specification = AsyncAPI(
        *brokers, commands, title="Verwijshub", version="1.0.0", schema_version="3.0.0",
        description="The youth-care referral hub of Groningen: every topic its services and admin commands read "
                    "and write. Every client authenticates with SASL/SCRAM-SHA-512 over TLS as its own principal; "
                    "`x-access` on each channel says which principals may publish and subscribe (docs/security.md). "
                    "A recipient reads its handovers and notices on `handovers.wij.{team}.v1` or "
                    "`handovers.provider.{agb}.v1` (the `schema` header tells them apart) and writes feedback to its "
                    "own `feedback.*` topic; channels tagged `internal` are the hub's own state. "
                    "Topics, keys and headers: docs/design.md; inbound JSON documents: schemas/json/.")
    document = json.loads(specification.to_specification().to_json())
    for title, channel in document["channels"].items():
        channel["x-access"] = access_of(channel["address"], topics.all_topics(registry))
        parameters = PARAMETER.findall(channel["address"])
        if parameters:
            channel["parameters"] = {name: PARAMETERS[name] for name in parameters}
        if channel["address"] in topics.INTERNAL:
            channel["tags"] = [INTERNAL_TAG]
        if title in written:
            for reference in channel["messages"].values():
                message = document["components"]["messages"][reference["$ref"].rsplit("/", 1)[1]]
                message.update(headers=written_headers(written[title]), contentType=written[title].content_type,
                               correlationId={"location": "$message.header#/correlation-id"})
    return document


def written_headers(output: Any) -> dict[str, Any]:
    """The headers of every record the hub writes (docs/design.md, "Message headers")."""
    return {"type": "object", "required": ["content-type", "schema", "correlation-id", "channel"], "properties": {
        "content-type": {"type": "string", "examples": [output.content_type]},
        "schema": {"type": "string", "examples": [output.schema_header], "description": "What the value is: one "
                   "topic may carry several kinds (a handover, a notice)."},
        "correlation-id": {"type": "string", "description": "The hub referral id; empty where no one referral "
                           "applies."},
        "channel": {"type": "string", "description": "The referrer channel; empty where none applies."}}}


def access_of(address: str, known_topics: list[str]) -> dict[str, list[str]]:
    """Who may publish and subscribe on a channel: its topic, or each topic its pattern matches (recipients
    named with placeholders)."""
    from services.access.matrix import who_may
    from services.infra.contract import address_pattern

    family = address_pattern(address)
    matched = [name for name in known_topics
               if family.fullmatch(name) or re.fullmatch(address, name) or re.search(address, name)]
    found: dict[str, set[str]] = {"publish": set(), "subscribe": set()}
    for name in matched or [address]:
        for operation, names in who_may(name).items():
            found[operation] |= set(names)
    return {operation: sorted(names) for operation, names in found.items()}


def openapi_document() -> dict[str, Any]:
    from services.gateway.api import openapi_document as gateway_openapi

    return gateway_openapi()


def recipients_openapi_document() -> dict[str, Any]:
    from services.recipients.api import openapi_document as recipients_openapi

    return recipients_openapi()


def rendered() -> dict[Path, str]:
    files = {SCHEMAS_DIR / "json" / f"{name}.schema.json": _dump(json_schema(model, name))
             for name, model in JSON_SCHEMAS.items()}
    files[SCHEMAS_DIR / "asyncapi.json"] = _dump(asyncapi_document())
    files[SCHEMAS_DIR / "openapi.json"] = _dump(openapi_document())
    files[SCHEMAS_DIR / "openapi-recipients.json"] = _dump(recipients_openapi_document())
    files[SECURITY_DOC] = security_doc()
    return files


def security_doc() -> str:
    """docs/security.md with the ACL matrix between its markers as the code grants it."""
    from services.access.matrix import matrix_table

    text = SECURITY_DOC.read_text()
    start, end = text.index(MATRIX_START) + len(MATRIX_START), text.index(MATRIX_END)
    return text[:start] + "\n" + matrix_table() + text[end:]


def stale() -> list[Path]:
    """The generated files whose committed content differs from what the code generates now."""
    return [path for path, text in rendered().items() if not path.exists() or path.read_text() != text]


def write() -> list[Path]:
    changed = stale()
    for path, text in rendered().items():
        if path in changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return changed


def main(argv: list[str]) -> int:
    if "--check" in argv:
        outdated = stale()
        for path in outdated:
            print(f"outdated: {path.relative_to(SCHEMAS_DIR.parent)} (run `verwijshub schemas`)")
        return 1 if outdated else 0
    for path in write():
        print(f"written: {path.relative_to(SCHEMAS_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
