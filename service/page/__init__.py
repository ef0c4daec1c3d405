"""The protocol pages: ``GET /protocol/{name}`` for each protocol served, ``GET /`` and ``GET /protocol`` for the
default (first) one, generated from the loaded artifacts.

Everything a page says about its protocol is read from that protocol's :class:`protocol.engine.content.Content` --
the PlanDefinitions (phases, recommendations, cards), the ActivityDefinitions they propose, the Library (named
findings, data requirements), the ValueSets and CodeSystems and ``publication.json``. ``logic`` reads them,
``builder`` turns them into the small view model of ``model`` (with ``text`` for the wording), and the Jinja
templates of this blueprint (``service/templates/protocol/``) render it with autoescaping; the stylesheet is
``service/static/protocol.css``, served by the application's static route. Only headings and labels are written
in the templates, so a change to an artifact shows up on the page at the next start. A protocol without phases,
safety rules or order review gets a page without those parts.

Every action of every PlanDefinition has an HTML anchor equal to its id, because the CDS Hooks cards link to
``{base}/protocol#<action id>`` (``{base}/protocol/{name}#<action id>`` for a protocol other than the default). The
pages are public documentation: this blueprint has no authentication hook (the CDS Hooks and FHIR blueprints
authenticate their own requests).

Each page is rendered once, when the blueprint is registered on an application, and served from memory with an
ETag. Links are relative (``static/protocol.css``, ``protocol/artifacts/Type-id.json`` and ``fhir/Type/id``, with
``../`` in front on ``/protocol/{name}``), so they resolve from wherever a page is served and keep working behind a
proxy that adds a path prefix. ``GET /protocol/artifacts/{Type}-{id}.json`` serves each artifact's JSON, of any
protocol, without authentication; the ``fhir/`` link goes to the FHIR API, which may ask for a token.
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
from service.page.model import Link

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


def render_protocol_page(content: Content, root: str = "", protocols: list[Link] | None = None) -> str:
    """The HTML of the protocol page for one protocol's artifacts (inside an application context); ``root`` is the
    way up from where it is served to the service's root (``../`` from ``/protocol/{name}``)."""
    return render_template(TEMPLATE, page=build_page(content, root, protocols), stylesheet=root + stylesheet_href())


def protocol_links(content: Content, current: Content, root: str) -> list[Link]:
    """Links to the page of every protocol served (none when there is one), the current one without a link."""
    if len(content.protocols) < 2:
        return []
    return [Link(str(part.publication.get("title") or part.name), "" if part is current else f"{root}protocol/{part.name}")
            for part in content.protocols]


# -- serving ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CachedPage:
    """The rendered page and its ETag."""
    html: bytes
    etag: str


@bp.record_once
def _render_at_start(setup: BlueprintSetupState) -> None:
    """Render the pages once, when the blueprint is registered (create_app has stored the loaded content by then):
    each protocol's under ``/protocol/{name}``, and the default protocol's again for ``/`` and ``/protocol``."""
    content = setup.app.extensions["back_spasm_cds"].engine.content
    pages: dict[str, CachedPage] = {}
    with setup.app.app_context():
        for part in content.protocols:
            pages[part.name] = _cached(render_protocol_page(part, "../", protocol_links(content, part, "../")))
        first = content.protocols[0]
        pages[""] = _cached(render_protocol_page(first, "", protocol_links(content, first, "")))
    setup.app.extensions[PAGE_KEY] = pages


def _cached(text: str) -> CachedPage:
    raw = text.encode("utf-8")
    return CachedPage(raw, hashlib.sha256(raw).hexdigest()[:32])


@bp.get("/")
@bp.get("/protocol")
@bp.get("/protocol/<name>")
def protocol_page(name: str = "") -> Response:
    """A protocol's page (public, no authentication): the default protocol's at ``/`` and ``/protocol``."""
    page: CachedPage | None = current_app.extensions[PAGE_KEY].get(name)
    if page is None:
        known = ", ".join(f"/protocol/{n}" for n in current_app.extensions[PAGE_KEY] if n)
        raise NotFound(f"no protocol named '{name}' (the protocols served: {known})")
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
