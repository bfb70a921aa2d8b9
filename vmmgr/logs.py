"""Logging set-up: plain text by default, one JSON object per line with --log-json.

Every record carries the id of the RPC it belongs to (``request_id``, a context variable the
API interceptor sets) and passes a redaction filter so bearer tokens never reach a log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("vmmgr_request_id", default="")

# vmmgr token secrets ("vmm_" + 43 url-safe characters) and any "Bearer xyz" value.
_SECRET_RE = re.compile(r"(vmm_[A-Za-z0-9_-]{8,})|((?i:bearer)\s+)[^\s'\",]+")


def redact(text: str) -> str:
    return _SECRET_RE.sub(lambda m: (m.group(2) or "") + "[REDACTED]", text)


class ContextFilter(logging.Filter):
    """Adds ``record.request_id`` and scrubs token secrets from the rendered message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            data["request_id"] = rid
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(data)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        rid = getattr(record, "request_id", "")
        return f"{text} [request_id={rid}]" if rid else text


def setup_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
