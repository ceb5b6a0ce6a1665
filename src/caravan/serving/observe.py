"""What the model server tells its operators: JSON log lines, Prometheus metrics, Sentry."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import LoadedModel, ModelHolder

log = logging.getLogger("caravan.serving")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with the request id and model when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "message": record.getMessage()}
        for key in ("request_id", "model", "status", "duration_ms", "path"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # ensure_ascii: a message may quote client input (a lone surrogate cannot be written as UTF-8)
        return json.dumps(entry, default=str)


def log_json_lines() -> None:
    """Send every log record to stdout as one JSON line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


class Metrics:
    """Prometheus metrics of one server (its own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("caravan_requests", "Prediction requests by status code (499: the client left)",
                                ["status"], registry=self.registry)
        self.latency = Histogram("caravan_request_seconds", "Prediction request latency by status code", ["status"],
                                 registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.model_info = Gauge("caravan_model_info", "The model being served (value 1)", ["artifact_id"],
                                registry=self.registry)
        self.reloads = Counter("caravan_model_reloads",
                               "Model reloads by result: success, failure (refused cleanly), crashed (killed the "
                               "probe process)", ["result"], registry=self.registry)
        self.pointer_errors = Counter("caravan_pointer_errors",
                                      "Errors reading, parsing or applying the model pointer, by error type",
                                      ["error"], registry=self.registry)
        self.degraded = Gauge("caravan_degraded", "1 while /health says degraded or unavailable",
                              registry=self.registry)

    def served(self, model: LoadedModel, previous: LoadedModel | None) -> None:
        if previous is not None:
            self.model_info.remove(previous.artifact_id)
        self.model_info.labels(model.artifact_id).set(1)


def sentry(holder: ModelHolder) -> Any:
    """Sentry, when SENTRY_DSN is set and sentry-sdk is installed; errors carry the served model as a tag."""
    if not os.environ.get("SENTRY_DSN"):
        return None
    try:
        import sentry_sdk
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is not installed; errors are only logged")
        return None

    def tag(event: dict[str, Any], hint: Any) -> dict[str, Any]:
        event.setdefault("tags", {})["model_version"] = holder.current.artifact_id if holder.current else None
        return event

    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], before_send=tag)  # type: ignore[arg-type]
    return sentry_sdk
