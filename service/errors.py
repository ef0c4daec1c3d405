"""Errors of the service as exceptions, turned into HTTP answers in one place.

Every error answer is JSON: a FHIR OperationOutcome whose diagnostics say what was wrong (CDS Hooks 3.0
recommends an OperationOutcome for non-2xx answers). No stack trace and no patient data ever goes out.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 412: "incomplete",
               413: "too-costly", 415: "not-supported", 429: "throttled", 500: "exception", 503: "transient"}


class SchemaTooNew(RuntimeError):
    """The database was made or migrated by a newer version of the service: this one must not write to it."""


class ServiceError(Exception):
    """A request the service cannot answer as asked; status and message go to the client."""

    status = 400

    def __init__(self, message: str, status: int | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.details = details or []


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404


class UnsupportedMediaType(ServiceError):
    status = 415


class PreconditionFailed(ServiceError):
    """Data the service needs could not be had (CDS Hooks: 412)."""

    status = 412


class Unauthorized(ServiceError):
    status = 401


def outcome(status: int, message: str, details: list[str] | None = None) -> dict[str, Any]:
    """An OperationOutcome body for an error answer."""
    code = ISSUE_CODES.get(status, "processing")
    issues = [{"severity": "error", "code": code, "diagnostics": message}]
    issues += [{"severity": "error", "code": code, "diagnostics": d} for d in details or []]
    return {"resourceType": "OperationOutcome", "issue": issues}


def error_response(status: int, message: str, details: list[str] | None = None, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(outcome(status, message, details))
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Map every exception to a JSON answer: ServiceError as told, HTTP errors by status, anything else 500."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
        return error_response(exc.status, exc.message, exc.details, headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {404: "no such endpoint", 405: "method not allowed on this endpoint",
                    413: f"request body too large (limit {app.config.get('MAX_CONTENT_LENGTH')} bytes)"}
        response = error_response(status, messages.get(status, exc.description or exc.name))
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        from service.logs import log_exception

        log_exception(exc)
        return error_response(500, "internal error: the request could not be processed")
