"""The service's configuration, in one place: defaults, an optional JSON file, environment variables, command line.

Each setting can be given in a JSON file named by ``BACK_SPASM_CDS_CONFIG`` (keys as below), overridden by an
environment variable ``BACK_SPASM_CDS_<NAME>`` (upper case), e.g. ``BACK_SPASM_CDS_REQUEST_BUDGET=2.5``, which the
command line overrides in turn. A caller may give its own defaults (``serve`` derives the mode from the address it
binds); they stand only where no file, variable or option sets the value. ``Settings.sources`` says where each
setting came from.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from protocol.engine.fhirpath import time_zone

ENV_PREFIX = "BACK_SPASM_CDS_"
#: Shortest operator_token accepted: a token that can be guessed would open the feedback report.
OPERATOR_TOKEN_MIN_LENGTH = 24


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass
class Settings:
    """Everything the service can be told."""

    content_dir: str | None = None            #: one protocol content folder (content_dirs for several)
    content_dirs: list[str] = field(default_factory=list)  #: protocol content folders, the first the default (default: every folder of protocol/content/ with a publication.json)
    database: str = "back-spasm-cds.sqlite"   #: issued cards, feedback, token ids: SQLite file (path or sqlite:///path, created 0600) or postgresql:// URL
    retention_days: int = 90                  #: days issued cards and feedback are kept before they are deleted (0: for ever)
    request_budget: float = 3.0               #: seconds a hook call may spend fetching missing prefetch
    max_body_bytes: int = 5 * 1024 * 1024     #: largest request body accepted (413 above)
    max_resources: int = 20000                #: most resources a request's record may hold, Bundles flattened (413 above)
    apply_time_limit: float = 5.0             #: seconds the protocol may take to apply to one request (503 after)
    max_pages: int = 10                       #: searchset pages followed per query
    prefetch_url_limit: int = 2048            #: longest prefetch template; longer code lists are dropped from it
    fetch_workers: int = 4                    #: parallel FHIR requests when prefetch is missing
    cors_origins: list[str] = field(default_factory=list)  #: browser origins allowed (CORS) besides the mode's own
    public_base_url: str | None = None        #: external base URL when behind a proxy (for links and JWT aud)
    mode: str = "development"                 #: development (sandbox issuer trusted, unauthenticated calls allowed) or production
    trusted_clients: str | None = None        #: JSON file of trusted CDS clients (required in production)
    allow_unauthenticated: bool = True        #: development only: accept calls without a JWT
    operator_token: str | None = None         #: bearer token that opens /report (feedback report); without it /report does not exist
    log_level: str = "INFO"
    timezone: str = "UTC"                     #: local time zone (IANA name) in which dates without a time are read
    workers: int = 0                          #: gunicorn worker processes (0: one per CPU core)
    worker_class: str = "gevent"              #: gevent (a slow client holds a greenlet, not a thread) or gthread
    worker_connections: int = 1000            #: gevent: connections per worker
    threads: int = 4                          #: gthread: threads per worker
    sources: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)  #: where each setting came from

    @classmethod
    def load(cls, environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None,
             defaults: dict[str, Any] | None = None) -> "Settings":
        """Built-in defaults, the caller's ``defaults``, the JSON file named by BACK_SPASM_CDS_CONFIG, environment
        variables, then ``overrides`` (the command line); each later source wins."""
        environ = dict(os.environ if environ is None else environ)
        known = {f.name: f for f in fields(cls) if f.init}
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}

        def take(found: dict[str, Any], source: str) -> None:
            values.update(found)
            sources.update(dict.fromkeys(found, source))

        take(dict(defaults or {}), "the address served (default)")
        config_file = environ.get(ENV_PREFIX + "CONFIG")
        if config_file:
            take(_read_file(config_file), f"the file {config_file}")
        for name, f in known.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                take({name: _parse(name, raw, f.type)}, f"the environment ({ENV_PREFIX}{name.upper()})")
        take(dict(overrides or {}), "the command line")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        settings = cls(**values)
        settings.sources = {name: sources.get(name, "built-in default") for name in known}
        settings.check()
        return settings

    def check(self) -> None:
        """Reject values that cannot work."""
        if self.request_budget <= 0:
            raise ConfigError("request_budget must be a positive number of seconds")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes must be at least 1024")
        if self.max_resources < 1:
            raise ConfigError("max_resources must be at least 1")
        if not 0 < self.apply_time_limit < float("inf"):
            raise ConfigError("apply_time_limit must be a positive number of seconds")
        if isinstance(self.retention_days, bool) or not isinstance(self.retention_days, int) or self.retention_days < 0:
            raise ConfigError("retention_days must be a whole number of days, 0 to keep issued cards and feedback for ever")
        if self.max_pages < 1 or self.fetch_workers < 1 or self.threads < 1 or self.workers < 0:
            raise ConfigError("max_pages, fetch_workers and threads must be at least 1, workers at least 0")
        if self.public_base_url and not self.public_base_url.startswith(("http://", "https://")):
            raise ConfigError("public_base_url must be an http(s) URL")
        if self.worker_class not in ("gevent", "gthread"):
            raise ConfigError("worker_class must be gevent or gthread")
        if self.worker_connections < 1:
            raise ConfigError("worker_connections must be at least 1")
        if self.mode not in ("development", "production"):
            raise ConfigError("mode must be development or production")
        if self.mode == "production" and not self.trusted_clients:
            raise ConfigError("production mode needs trusted_clients (the JSON file of the CDS clients to trust)")
        if self.mode == "production" and not self.public_base_url:
            raise ConfigError("production mode needs public_base_url (the service's external URL): tokens' aud and card links "
                              "are checked and written against it, never against a request's Host header")
        if self.operator_token is not None and (len(self.operator_token) < OPERATOR_TOKEN_MIN_LENGTH or not self.operator_token.isprintable()
                                                or any(c.isspace() for c in self.operator_token)):
            raise ConfigError(f"operator_token must be at least {OPERATOR_TOKEN_MIN_LENGTH} printable characters without spaces "
                              "(for example the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
        database_kind(self.database)
        try:
            time_zone(self.timezone)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"timezone: {exc}") from exc

    def content_folders(self) -> list[str] | None:
        """The protocol folders to serve: ``content_dirs`` or ``content_dir``, whichever the later source set (``content_dirs``
        on a tie); None for every protocol folder shipped with the package."""
        ranks = ["built-in default", "the address served (default)", "the file", "the environment", "the command line"]

        def rank(name: str) -> int:
            source = self.sources.get(name, "built-in default")
            return max(i for i, start in enumerate(ranks) if source.startswith(start) or i == 0)

        if self.content_dirs and (self.content_dir is None or rank("content_dirs") >= rank("content_dir")):
            return list(self.content_dirs)
        return [self.content_dir] if self.content_dir else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("sources", None)
        return out


def database_kind(database: str) -> str:
    """Which database a ``database`` setting names: "postgresql" for a postgresql:// (or postgres://) URL, "sqlite" for
    sqlite:///path or a plain file path; ConfigError for any other URL."""
    if database.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    if "://" in database and not database.startswith("sqlite:///"):
        raise ConfigError("database must be a file path, sqlite:///path or postgresql://user@host:port/database")
    return "sqlite"


def _read_file(path: str) -> dict[str, Any]:
    """The settings of a JSON configuration file."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{ENV_PREFIX}CONFIG={path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a JSON object of settings is expected")
    return loaded


def _parse(name: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    if "bool" in text:
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected true or false")
    try:
        if "list" in text:
            separators = f"[,{re.escape(os.pathsep)}]" if name == "content_dirs" else ","  # folders: also the PATH separator
            return [item.strip() for item in re.split(separators, raw) if item.strip()]
        if "float" in text:
            return float(raw)
        if "int" in text:
            return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
    return raw
