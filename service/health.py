"""Liveness and readiness probes (a Flask blueprint)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the protocol is compiled and the feedback database answers."""
    state = current_app.extensions["back_spasm_cds"]
    checks = {"content": bool(state.services), "database": state.store.ready()}
    ready = all(checks.values())
    answer = jsonify({"status": "ready" if ready else "not ready", "checks": checks,
                      "version": state.engine.content.publication["version"], "services": sorted(state.services),
                      "protocols": {part.name: part.publication["version"] for part in state.engine.content.protocols}})
    answer.status_code = 200 if ready else 503
    return answer
