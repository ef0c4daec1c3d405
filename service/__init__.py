"""The CDS Hooks 2.0 service: a Flask application factory over the protocol engine.

``create_app()`` loads and compiles the protocol once, opens the feedback database, registers the
blueprints (CDS Hooks endpoints, health probes), CORS and the error handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from flask_cors import CORS

from protocol.engine.apply import Engine
from protocol.engine.content import Content, load_contents
from service import logs
from service.cds_hooks.auth import Authenticator, ReplayCache, TrustedClient, load_clients
from service.cds_hooks.feedback import FeedbackStore
from service.cds_hooks.registry import Service, build_services
from service.config import Settings
from service.errors import register_error_handlers


@dataclass
class ServiceState:
    """What the request handlers share: settings, compiled protocol, services, stores, clock, HTTP client."""

    settings: Settings
    engine: Engine
    services: dict[str, Service]
    store: FeedbackStore
    clock: Callable[[], datetime]
    http: requests.Session
    page_url: Callable[[str], str]
    auth: Authenticator


def _page_url(settings: Settings, content: Content) -> Callable[[str], str]:
    """The link of a card to its action on its protocol's page: ``/protocol`` for the default (first) protocol,
    ``/protocol/{name}`` for the others."""
    from flask import request

    pages: dict[str, str] = {}
    for number, part in enumerate(content.protocols):
        for plan in part.of_type("PlanDefinition"):
            for action in _actions(plan.get("action")):
                if isinstance(action.get("id"), str):
                    pages.setdefault(action["id"], f"/protocol/{part.name}" if number else "/protocol")

    def page_url(anchor: str) -> str:
        base = settings.public_base_url or request.host_url
        return f"{base.rstrip('/')}{pages.get(anchor, '/protocol')}" + (f"#{anchor}" if anchor else "")

    return page_url


def _actions(actions: Any) -> list[dict[str, Any]]:
    """Every action of a list of actions, nested ones included."""
    found = [a for a in actions or [] if isinstance(a, dict)]
    return found + [n for a in found for n in _actions(a.get("action"))]


#: Browser origins a development server answers: the public CDS Hooks Sandbox, and a sandbox run on this machine.
SANDBOX_ORIGIN = "https://sandbox.cds-hooks.org"
LOOPBACK_ORIGIN = r"^https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?$"


def cors_origins(settings: Settings) -> list[str]:
    """The origins whose pages may call the services: the configured ones, and in development the sandbox's and
    loopback ones. Never any origin by default: a page on another site must not probe the network through us."""
    own = [SANDBOX_ORIGIN, LOOPBACK_ORIGIN] if settings.mode == "development" else []
    return own + list(settings.cors_origins)


DEVELOPMENT_CLIENTS = Path(__file__).resolve().parent / "trust" / "development-clients.json"


def trusted_clients(settings: Settings) -> dict[str, TrustedClient]:
    """The configured clients; in development also the public CDS Hooks Sandbox (its key is public: never in production)."""
    clients = load_clients(DEVELOPMENT_CLIENTS) if settings.mode == "development" else {}
    if settings.trusted_clients:
        clients.update(load_clients(settings.trusted_clients))
    return clients


def create_app(settings: Settings | None = None, *, engine: Engine | None = None, clock: Callable[[], datetime] | None = None,
               http: requests.Session | None = None) -> Flask:
    """Build the application: content compiled at start, so the first request is not slow."""
    settings = settings or Settings.load()
    logs.configure(settings.log_level)
    engine = engine or Engine(load_contents(settings.content_folders()), timezone=settings.timezone)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.json.compact = True
    clock = clock or (lambda: datetime.now(timezone.utc))
    http = http or requests.Session()
    store = FeedbackStore(settings.database)
    auth = Authenticator(trusted_clients(settings), production=settings.mode == "production",
                         allow_unauthenticated=settings.allow_unauthenticated, replay=ReplayCache(store.path), clock=clock, http=http)
    state = ServiceState(settings=settings, engine=engine, services=build_services(engine, settings.prefetch_url_limit),
                         store=store, clock=clock, http=http, page_url=_page_url(settings, engine.content), auth=auth)
    app.extensions["back_spasm_cds"] = state
    CORS(app, resources={r"/cds-services*": {"origins": cors_origins(settings)}}, allow_headers=["Authorization", "Content-Type"],
         methods=["GET", "POST", "OPTIONS"], max_age=600, supports_credentials=False)
    from service import fhir_api, health
    from service.cds_hooks import hooks

    app.register_blueprint(hooks.bp)
    app.register_blueprint(fhir_api.bp)
    app.register_blueprint(health.bp)
    from service import page
    app.register_blueprint(page.bp)  # the public protocol page: / and /protocol
    from service.report import endpoint as report
    report.register(app)  # /report, only when the operator_token setting is given
    register_error_handlers(app)
    logs.install(app)
    return app


def state_of(app: Flask) -> Any:
    """The shared service state of an application."""
    return app.extensions["back_spasm_cds"]
