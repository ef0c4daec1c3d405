"""Structured logs: one JSON line per request, with no patient data and no tokens.

A request line names the service, hook and hookInstance, the status, the time spent in each stage, how many
cards went out, how many resources of other patients were ignored (a count) and which prefetch keys were
supplied, fetched or empty (names only). Patient ids, resource contents, JWTs and access tokens are never
written; unexpected errors are logged by type and code location only, because exception messages can quote data.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any

from flask import Flask, Response, g, request

ACCESS = logging.getLogger("back_spasm_cds.access")
ERRORS = logging.getLogger("back_spasm_cds.errors")


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object: the structured fields if any, else the message."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                                   "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        else:
            payload["message"] = record.getMessage()
        return json.dumps(payload, separators=(",", ":"), default=str)


#: Libraries whose log records can quote a request URL, which holds the patient's id: kept quiet.
QUIET_LIBRARIES = ("urllib3", "requests")


def configure(level: str) -> None:
    """Send the service's loggers to standard error as JSON lines; keep the HTTP client libraries' URLs out of logs."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    root = logging.getLogger("back_spasm_cds")
    root.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.propagate = False


def log_exception(exc: BaseException) -> None:
    """An unexpected error: its type and where it happened (file, line, function), never its message."""
    frames = traceback.extract_tb(exc.__traceback__)[-5:]
    ERRORS.error("unhandled error", extra={"fields": {"event": "error", "error": type(exc).__name__,
                                                      "where": [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}:{f.name}" for f in frames],
                                                      "path": request.path if request else None}})


def install(app: Flask) -> None:
    """Time every request and log it when the response goes out."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        started = g.get("started")
        fields: dict[str, Any] = {"event": "request", "method": request.method, "path": request.path, "status": response.status_code,
                                  "ms": round((time.perf_counter() - started) * 1000, 2) if started else None}
        view_args = request.view_args or {}
        if "service_id" in view_args:
            fields["service"] = view_args["service_id"]
        for name in ("hook", "hook_instance", "cards", "ignored_resources"):
            if g.get(name) is not None:
                fields[name] = g.get(name)
        if g.get("timings"):
            fields["timings_ms"] = {k: round(v, 2) for k, v in g.timings.items()}
        report = g.get("prefetch")
        if report is not None:
            fields["prefetch"] = {"supplied": report.supplied, "fetched": report.fetched, "empty": report.empty,
                                  "pages": report.pages, "medications_fetched": report.medications_fetched}
        client = g.get("client")
        fields["client"] = getattr(client, "iss", None)
        if g.get("tenant"):
            fields["tenant"] = g.tenant
        if g.get("fhir_server_refused"):
            fields["fhir_server_refused"] = True
        if g.get("auth_failure"):
            fields["auth_failure"] = g.auth_failure
        ACCESS.info("request", extra={"fields": fields})
        return response
