"""Structured JSON logs for every service, with personal data kept out.

Every line is one JSON object. The services log only identifiers that are safe to show (hub referral
id, referrer's referral id, pseudonym, topic, partition, offset); `drop_personal_data` is the safety
net that strips fields whose names say they hold personal data, should anyone log them by mistake.
"""

import logging
import sys
from pathlib import Path
from typing import Any

import structlog

PERSONAL_FIELDS = frozenset(
    {"bsn", "name", "birth_date", "birthdate", "postcode", "postal_code", "address", "free_text",
     "text", "note", "notes", "youth", "patient", "body", "payload", "raw"}
)


def drop_personal_data(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in PERSONAL_FIELDS & event.keys():
        event[key] = "[redacted]"
    return event


class RenderedOnce(structlog.stdlib.ProcessorFormatter):
    """Renders a line once however many handlers write it (stderr and the log file): rendering is most of a log
    line's cost, and the services log one line per record they handle."""

    def format(self, record: logging.LogRecord) -> str:
        rendered = getattr(record, "verwijshub_rendered", None)
        if rendered is None:
            rendered = super().format(record)
            record.verwijshub_rendered = rendered
        return rendered


def configure_logging(service: str, level: str = "INFO", log_file: Path | None = None) -> None:
    """JSON lines on stderr (and `log_file`), for structlog and for the stdlib loggers of libraries."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_personal_data,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = RenderedOnce(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    root.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(**context: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger("verwijshub").bind(**context)
