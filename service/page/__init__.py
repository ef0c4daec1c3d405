"""The protocol page: ``GET /`` and ``GET /protocol``, generated from the loaded artifacts.

Everything the page says about the protocol is read from :class:`protocol.engine.content.Content` -- the
PlanDefinitions (phases, recommendations, cards), the ActivityDefinitions they propose, the Library (named
findings, data requirements), the ValueSets and CodeSystems and ``publication.json``. ``logic`` reads them,
``builder`` turns them into the small view model of ``model`` (with ``text`` for the wording), and the Jinja
templates of this blueprint (``service/templates/protocol/``) render it with autoescaping; the stylesheet is
``service/static/protocol.css``, served by the application's static route. Only headings and labels are written
in the templates, so a change to an artifact shows up on the page at the next start.

Every action of every PlanDefinition has an HTML anchor equal to its id, because the CDS Hooks cards link to
``{base}/protocol#<action id>``. The page is public documentation: this blueprint has no authentication hook
(the CDS Hooks and FHIR blueprints authenticate their own requests).

The page is rendered once, when the blueprint is registered on an application, and served from memory with
an ETag. Links are relative (``static/protocol.css``, ``protocol/artifacts/Type-id.json`` and ``fhir/Type/id``),
so they resolve the same from ``/`` and ``/protocol`` and keep working behind a proxy that adds a path prefix.
``GET /protocol/artifacts/{Type}-{id}.json`` serves each artifact's JSON without authentication; the ``fhir/``
link goes to the FHIR API, which may ask for a token.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Response, current_app, render_template, request
from flask.blueprints import BlueprintSetupState

from protocol.engine.content import Content
from service.errors import NotFound
from service.page.builder import build_page
from service.page.logic import walk

__all__ = ["PAGE_KEY", "PAGE_HEADERS", "STYLESHEET", "bp", "render_protocol_page", "walk"]

SERVICE_DIR = Path(__file__).resolve().parent.parent
bp = Blueprint("protocol_page", __name__, template_folder=str(SERVICE_DIR / "templates"))

PAGE_KEY = "back_spasm_cds.protocol_page"
FHIR_JSON = "application/fhir+json"
TEMPLATE = "protocol/page.html"
STYLESHEET = SERVICE_DIR / "static" / "protocol.css"

#: Security headers of the HTML answer: the page loads its stylesheet from this origin and nothing else, and runs no script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def stylesheet_href() -> str:
    """The relative address of the stylesheet, with a hash of its content so that a changed file is fetched again."""
    digest = hashlib.sha256(STYLESHEET.read_bytes()).hexdigest()[:16]
    return f"static/{STYLESHEET.name}?v={digest}"


def render_protocol_page(content: Content) -> str:
    """The HTML of the protocol page for the given artifacts (inside an application context)."""
    return render_template(TEMPLATE, page=build_page(content), stylesheet=stylesheet_href())


# -- serving ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CachedPage:
    """The rendered page and its ETag."""
    html: bytes
    etag: str


@bp.record_once
def _render_at_start(setup: BlueprintSetupState) -> None:
    """Render the page once, when the blueprint is registered (create_app has stored the loaded content by then)."""
    content = setup.app.extensions["back_spasm_cds"].engine.content
    with setup.app.app_context():
        text = render_protocol_page(content).encode("utf-8")
    setup.app.extensions[PAGE_KEY] = CachedPage(text, hashlib.sha256(text).hexdigest()[:32])


@bp.get("/")
@bp.get("/protocol")
def protocol_page() -> Response:
    """The protocol page (public, no authentication)."""
    page: CachedPage = current_app.extensions[PAGE_KEY]
    response = Response(page.html, mimetype="text/html")
    response.set_etag(page.etag)
    response.headers.update(PAGE_HEADERS)
    return response.make_conditional(request)


@bp.get("/protocol/artifacts/<name>.json")
def artifact(name: str) -> Response:
    """One artifact as loaded, by its file name ``{Type}-{id}.json`` (public, no authentication)."""
    resource_type, _, resource_id = name.partition("-")
    resource = current_app.extensions["back_spasm_cds"].engine.content.get(resource_type, resource_id) if resource_id else None
    if resource is None:
        raise NotFound(f"no artifact '{name}.json' in the protocol (see /protocol#artifacts)")
    body = json.dumps(resource, ensure_ascii=False, indent=2) + "\n"
    response = Response(body, mimetype=FHIR_JSON)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = f'inline; filename="{resource_type}-{resource_id}.json"'
    return response
