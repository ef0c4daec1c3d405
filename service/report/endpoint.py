"""``GET /report`` (and its CSV files under ``/report/``): the feedback report, for operators holding the operator token.

The blueprint is registered only when the ``operator_token`` setting is given: without it ``/report`` does not exist
(404). With it, each request needs ``Authorization: Bearer <operator_token>``, compared in constant time; anything
else (no header, another token, a CDS client's JWT, which this endpoint never reads as one) is a 401 with
``WWW-Authenticate``. The answer is marked ``no-store`` and its Content-Security-Policy allows the page's own inline
style (by hash) and ``data:`` images only.

Charts cost about a hundred milliseconds each to draw, so the rendered page is kept for as long as the figures read
from the database stay the same (reading them is one grouped query).
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, request

from service.cds_hooks.feedback import DATABASE_ERRORS, StorageUnavailable
from service.errors import error_response
from service.report.figures import Figures, read_figures

log = logging.getLogger("back_spasm_cds.report")
bp = Blueprint("feedback_report", __name__)

REALM = 'Bearer realm="back-spasm-cds report"'
#: Headers of every answer of this blueprint: operator data, never cached or framed, no referrer sent from it.
COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


#: Where an application keeps its last rendered page.
CACHE_KEY = "back_spasm_cds.report"


def register(app: Flask) -> None:
    """Add /report to the application when its ``operator_token`` setting is given; otherwise leave it out."""
    if app.extensions["back_spasm_cds"].settings.operator_token:
        import service.report.writer  # noqa: F401 - matplotlib loaded at start (before gunicorn forks), not by the first request
        app.extensions[CACHE_KEY] = _Cache()
        app.register_blueprint(bp)


@dataclass(frozen=True)
class _Rendered:
    """A rendered page, the figures it shows and its Content-Security-Policy."""

    figures: Figures
    html: str
    csp: str


class _Cache:
    """The last page an application rendered (one entry: the report of the database as it is now)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.page: _Rendered | None = None


def _state():
    return current_app.extensions["back_spasm_cds"]


@bp.before_request
def _require_operator_token() -> Response | None:
    """401 unless the request carries the operator token as its bearer token."""
    expected = _state().settings.operator_token or ""
    scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
    if not scheme:
        return _refused("the report needs the operator token: send Authorization: Bearer <operator_token>", REALM)
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected.encode("utf-8")):
        return _refused("the Authorization header does not hold the operator token", f'{REALM}, error="invalid_token"')
    return None


def _refused(message: str, challenge: str) -> Response:
    return error_response(401, message, headers={"WWW-Authenticate": challenge, **COMMON_HEADERS})


def _rendered() -> _Rendered:
    """The page for the figures the database holds now: drawn again only when they changed since the last request."""
    from service.report.charts import draw_charts
    from service.report.writer import render_html, style_hashes

    state, cache = _state(), current_app.extensions[CACHE_KEY]
    figures = _figures()
    with cache.lock:
        cached = cache.page
    if cached is not None and cached.figures == figures:
        return cached
    html = render_html(figures, state.engine.content, draw_charts(figures), csv_href=lambda name: f"report/{name}")
    csp = (f"default-src 'none'; style-src {' '.join(style_hashes(html))}; img-src data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    rendered = _Rendered(figures, html, csp)
    with cache.lock:
        cache.page = rendered
    return rendered


def _figures() -> Figures:
    """The figures of the database now; a database that cannot be read is a 503 with Retry-After, as for the hooks."""
    state = _state()
    try:
        return read_figures(state.store, state.engine.content)
    except DATABASE_ERRORS as exc:
        log.error("database read refused", extra={"fields": {"event": "database-unavailable", "read": "feedback report",
                                                             "error": type(exc).__name__}})
        raise StorageUnavailable("the database cannot be read now for the report; ask again later") from None


@bp.get("/report")
def report_page() -> Response:
    """The report as an HTML page."""
    rendered = _rendered()
    return Response(rendered.html, mimetype="text/html", headers={"Content-Security-Policy": rendered.csp, **COMMON_HEADERS})


@bp.get("/report/<name>")
def report_csv(name: str) -> Response:
    """One of the report's CSV files (writer.CSV_FILES)."""
    from service.report.writer import CSV_FILES, csv_tables

    if name not in CSV_FILES:
        return error_response(404, f"no such file of the report: {name[:64]!r}; the files are {', '.join(CSV_FILES)}", headers=COMMON_HEADERS)
    figures = _figures()
    return Response(csv_tables(figures)[name], mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', **COMMON_HEADERS})
