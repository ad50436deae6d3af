"""Generates the published contract files under `schemas/` from the code, so they never drift from it:

- `schemas/json/<name>.schema.json`: JSON Schemas of the gi, ggd and court documents and of the hub's
  own messages, from the pydantic models;
- `schemas/asyncapi.json`: the AsyncAPI 3.0 document of intake, routing and notifier, from their
  FastStream brokers, with who may publish and subscribe on each channel;
- `schemas/openapi.json`: the OpenAPI document of the referrer gateway's HTTPS interface, from its FastAPI app
  (the JSON channels' bodies from the same pydantic models);
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
from schemas.notices import RecipientClocks, RecipientNotice
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
    "recipient-clocks": RecipientClocks,
}
PLACEHOLDER_BOOTSTRAP = "kafka:9092"
"""The server named in the AsyncAPI document: a placeholder, so the file does not depend on this machine."""


def _dump(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def json_schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"urn:verwijshub:schema:{name}",
            **schema}


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI document FastStream generates from the three services' brokers."""
    from faststream.specification import AsyncAPI

    from services.hub import SERVICES, create_service
    from services.infra import topics
    from services.infra.clock import SystemClock
    from services.infra.registry_files import load_registry
    from services.infra.settings import REPO_ROOT, Settings

    settings = Settings(kafka_bootstrap=PLACEHOLDER_BOOTSTRAP, kafka_username="<principal>",
                        kafka_password="<password>", pseudonym_key="<not used>", _env_file=None)
    registry = load_registry(REPO_ROOT / "deploy" / "registry")
    from services.infra.processing import Runtime

    services = [create_service(name, settings, registry, SystemClock()) for name in SERVICES]
    brokers = [service.specification() if isinstance(service, Runtime) else service for service in services]
    specification = AsyncAPI(
        *brokers, title="Verwijshub", version="1.0.0", schema_version="3.0.0",
        description="The youth-care referral hub of Groningen: what intake, routing and notifier consume. "
                    "Every client authenticates with SASL/SCRAM-SHA-512 over TLS as its own principal; "
                    "`x-access` on each channel says which principals may publish and subscribe (docs/security.md). "
                    "Topics, keys and headers: docs/design.md; inbound JSON documents: schemas/json/.")
    document = json.loads(specification.to_specification().to_json())
    for channel in document["channels"].values():
        channel["x-access"] = access_of(channel["address"], topics.all_topics(registry))
    return document


def access_of(address: str, known_topics: list[str]) -> dict[str, list[str]]:
    """Who may publish and subscribe on a channel: its topic, or each topic its pattern matches (recipients
    named with placeholders)."""
    from services.access.matrix import who_may

    matched = [name for name in known_topics if re.fullmatch(address, name) or re.search(address, name)]
    found: dict[str, set[str]] = {"publish": set(), "subscribe": set()}
    for name in matched or [address]:
        for operation, names in who_may(name).items():
            found[operation] |= set(names)
    return {operation: sorted(names) for operation, names in found.items()}


def openapi_document() -> dict[str, Any]:
    from services.gateway.api import openapi_document as gateway_openapi

    return gateway_openapi()


def rendered() -> dict[Path, str]:
    files = {SCHEMAS_DIR / "json" / f"{name}.schema.json": _dump(json_schema(model, name))
             for name, model in JSON_SCHEMAS.items()}
    files[SCHEMAS_DIR / "asyncapi.json"] = _dump(asyncapi_document())
    files[SCHEMAS_DIR / "openapi.json"] = _dump(openapi_document())
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
