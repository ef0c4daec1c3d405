"""Authenticating CDS clients (CDS Hooks 2.0 JWT) and deciding which FHIR servers a client may name.

Every request to discovery, a service or feedback carries ``Authorization: Bearer <JWT>``, signed by the
client. The trusted clients are configured (a JSON file): per issuer, its keys (inline JWKS, a JWKS file, or
the ``jku`` URLs it may use), the FHIR server base URLs it may name, and whether it is for development only.

A token is accepted when: its algorithm is an asymmetric one on the allow-list (never ``none`` or HMAC), its
issuer is configured (and, in production, not a development-only one), its ``jku`` (if any) is one the issuer
may use, its ``kid`` names one of the issuer's keys, the signature verifies, ``aud`` is exactly the URL
called, ``exp`` has not passed and ``iat`` is not in the future (small leeway), and its ``jti`` was never seen
before (kept until expiry, in the database shared by the workers). Failures answer 401 without saying which
check failed; the log says which, never with the token.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
import requests

from service.errors import Unauthorized
from service.urls import BadBaseUrl, fhir_base

log = logging.getLogger("back_spasm_cds.auth")

ALLOWED_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
LEEWAY_SECONDS = 60
MAX_LIFETIME_SECONDS = 3600
JWKS_TTL_SECONDS = 300
JWKS_REFRESH_COOLDOWN = 30
JWKS_MAX_BYTES = 64 * 1024
MAX_JTI_LENGTH = 256
MAX_NUMERIC_DATE = 253402300799  #: 9999-12-31T23:59:59Z
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


class AuthConfigError(ValueError):
    """The trusted-clients configuration cannot be used; the message names the problem."""


class AuthFailure(Exception):
    """Why a token was refused (for the log only; the client gets a plain 401)."""


@dataclass
class TrustedClient:
    """One CDS client: its issuer, keys, allowed jku URLs and FHIR servers."""

    iss: str
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    jku: list[str] = field(default_factory=list)
    fhir_servers: list[str] = field(default_factory=list)
    development_only: bool = False
    fetched: dict[str, float] = field(default_factory=dict)  #: last fetch attempt per jku URL (monotonic seconds)
    remote: dict[str, tuple[float, dict[str, jwt.PyJWK]]] = field(default_factory=dict)  #: keys per jku URL, with when they came


def _jwks_keys(jwks: Mapping[str, Any], where: str) -> dict[str, jwt.PyJWK]:
    keys = {}
    for i, item in enumerate(jwks.get("keys") or []):
        if not isinstance(item, Mapping) or not item.get("kid"):
            raise AuthConfigError(f"{where}: key {i} has no kid")
        try:
            keys[item["kid"]] = jwt.PyJWK(dict(item))
        except jwt.PyJWTError as exc:
            raise AuthConfigError(f"{where}: key {item['kid']}: {exc}") from exc
    return keys


def load_clients(path: str | Path) -> dict[str, TrustedClient]:
    """Read the trusted-clients file: ``{"clients": [{"iss", "jwks" | "jwks_file" | "jku", "fhir_servers", "development_only"}]}``."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AuthConfigError(f"{path}: {exc}") from exc
    clients: dict[str, TrustedClient] = {}
    for i, entry in enumerate((config or {}).get("clients") or []):
        where = f"{path} clients[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("iss"), str):
            raise AuthConfigError(f"{where}: iss is required")
        client = TrustedClient(entry["iss"], development_only=bool(entry.get("development_only", False)))
        if entry.get("jwks"):
            client.keys.update(_jwks_keys(entry["jwks"], where))
        if entry.get("jwks_file"):
            file = (path.parent / entry["jwks_file"]).resolve()
            try:
                client.keys.update(_jwks_keys(json.loads(file.read_text(encoding="utf-8")), f"{where} jwks_file"))
            except (OSError, json.JSONDecodeError) as exc:
                raise AuthConfigError(f"{where}: jwks_file {file}: {exc}") from exc
        client.jku = [u for u in entry.get("jku") or [] if isinstance(u, str)]
        client.fhir_servers = [u.rstrip("/") for u in entry.get("fhir_servers") or [] if isinstance(u, str)]
        if not client.keys and not client.jku:
            raise AuthConfigError(f"{where}: give the issuer's keys (jwks, jwks_file) or the jku URLs it uses")
        clients[client.iss] = client
    return clients


def normalise_url(url: str) -> str:
    """Scheme and host lower-cased, default port dropped, no trailing slash: how audiences are compared."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port is None or port == default else f"{host}:{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


class ReplayCache:
    """Token ids seen, until they expire; in the service's database (SQLite or PostgreSQL) so that every worker process,
    and with PostgreSQL every instance, sees them.

    The first use of a jti is written durably (synced to disk) before the request goes on, by one insert that does
    nothing on a conflict: the primary key decides between processes and instances that see the same jti at once, and
    exactly one of them inserts it (no read before the write). On PostgreSQL that insert is its own transaction (one
    round trip) unless the purge of expired ids goes with it. A database that cannot take the write refuses the
    request with a 503 (StorageUnavailable); a token is never let through unrecorded.
    """

    SCHEMA = "CREATE TABLE IF NOT EXISTS seen_jti (iss TEXT NOT NULL, jti TEXT NOT NULL, exp INTEGER NOT NULL, PRIMARY KEY (iss, jti));"
    #: Seconds between two purges of expired ids by one process (each on the first token id recorded after that time).
    PURGE_INTERVAL_SECONDS = 60

    def __init__(self, path: str):
        from service.cds_hooks.feedback import open_database  # the stores' one way of opening their database

        self.path = path  #: the database setting: an SQLite file or sqlite:/// URL, or a postgresql:// URL
        self._database = open_database(path, self.SCHEMA)
        self._last_purge: float | None = None
        self._purge_lock = threading.Lock()

    def run_calls_with(self, offload: Callable[[Callable[[], Any]], Any]) -> None:
        """Run every database call through ``offload`` (see SqliteFile.run_calls_with)."""
        self._database.run_calls_with(offload)

    def first_use(self, iss: str, jti: str, exp: int, now: float) -> bool:
        """Record the token id; False if it was already used. Ids whose token has expired (leeway included: such a
        token is refused before its id is looked up) are deleted in the same write, at most once a minute per process."""
        purge = self._purge_due(now)

        def record(db: Any) -> bool:
            if purge:
                db.execute("DELETE FROM seen_jti WHERE exp < ?", (int(now) - LEEWAY_SECONDS,))
            return db.execute("INSERT INTO seen_jti (iss, jti, exp) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (iss, jti, exp)).rowcount == 1

        return self._database.write(record, "token id", one_statement=not purge)

    def prepare(self, now: float) -> None:
        """Open this process's database connection and run its first purge of expired ids, so that its first request
        pays for neither; for a worker's warm-up after it forks. A database that cannot take it now is logged, not
        raised: requests then meet it as they would have."""
        from service.cds_hooks.feedback import DATABASE_ERRORS, StorageUnavailable

        try:
            self._database.open_connection()
            if self._purge_due(now):
                self._database.write(lambda db: db.execute("DELETE FROM seen_jti WHERE exp < ?", (int(now) - LEEWAY_SECONDS,)),
                                     "purge of token ids", durable=False)
        except (*DATABASE_ERRORS, StorageUnavailable) as exc:
            log.error("token-id database not prepared at start: %s", type(exc).__name__)

    def _purge_due(self, now: float) -> bool:
        """Whether this process's purge of expired ids is due at ``now`` (claimed, so that one thread runs it)."""
        with self._purge_lock:
            last = self._last_purge
            if last is not None and 0 <= now - last < self.PURGE_INTERVAL_SECONDS:
                return False
            self._last_purge = now
            return True


class Authenticator:
    """Checks the bearer JWT of a request against the trusted clients."""

    def __init__(self, clients: dict[str, TrustedClient], *, production: bool, allow_unauthenticated: bool,
                 replay: ReplayCache, clock: Callable[[], datetime], http: requests.Session | None = None):
        self.clients = clients
        self.production = production
        self.allow_unauthenticated = allow_unauthenticated and not production
        self.replay = replay
        self.clock = clock
        self.http = http or requests.Session()
        self.monotonic: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None, audience: str) -> TrustedClient | None:
        """The client that signed the request (None for an accepted unauthenticated development call); 401 otherwise."""
        return self.accept(authorization, audience)[0]

    def accept(self, authorization: str | None, audience: str) -> tuple[TrustedClient | None, str | None]:
        """authenticate, and the accepted token's ``tenant`` for the log (see _tenant), read from the claims already
        verified rather than by decoding the token again."""
        try:
            client, claims = self._authenticate(authorization, audience)
        except AuthFailure as exc:
            log.warning("authentication refused: %s", exc)
            raise Unauthorized("authentication failed: a valid CDS Hooks JWT bearer token is required") from None
        return client, _tenant(claims)

    def _authenticate(self, authorization: str | None, audience: str) -> tuple[TrustedClient | None, Mapping[str, Any]]:
        """The client and the verified claims of the token (none for an accepted unauthenticated call); AuthFailure
        otherwise. The token is decoded once unverified (header and claims, to find the key) and once verified."""
        if not authorization:
            if self.allow_unauthenticated:
                return None, {}
            raise AuthFailure("no Authorization header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailure("Authorization is not a Bearer token")
        token = token.strip()
        try:
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
            header, claims = unverified["header"], unverified["payload"]
        except jwt.PyJWTError as exc:
            raise AuthFailure(f"malformed token ({type(exc).__name__})") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
            raise AuthFailure("algorithm not on the allow-list")
        if header.get("typ") is not None and header.get("typ") != "JWT":
            raise AuthFailure("typ is not JWT")
        issuer = claims.get("iss")
        if not isinstance(issuer, str):
            raise AuthFailure("claim iss is not a string")
        client = self.clients.get(issuer)
        if client is None:
            raise AuthFailure("issuer is not a trusted client")
        if client.development_only and self.production:
            raise AuthFailure(f"issuer {client.iss} is trusted for development only")
        key = self._key(client, header)
        try:
            verified = jwt.decode(token, key=key, algorithms=[algorithm],
                                  options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False,
                                           "require": ["iss", "aud", "exp", "iat", "jti"]})
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure(f"claim {exc.claim} missing") from None
        except jwt.PyJWTError as exc:
            raise AuthFailure(f"signature or claims invalid ({type(exc).__name__})") from None
        self._check_claims(verified, audience)
        if not self.replay.first_use(client.iss, verified["jti"], int(verified["exp"]), self.clock().timestamp()):
            raise AuthFailure("jti already used (replay)")
        return client, verified

    def _check_claims(self, claims: Mapping[str, Any], audience: str) -> None:
        """aud is the URL called; exp, iat (and nbf) are numbers that put now inside the token's life; jti a string."""
        now = self.clock().timestamp()
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        try:
            expected = normalise_url(audience)
        except ValueError:
            raise AuthFailure("the URL called has no valid host") from None
        if not any(isinstance(a, str) and _same_url(a, expected) for a in audiences):
            raise AuthFailure("aud is not the URL called")
        exp, iat = _time_claim(claims, "exp"), _time_claim(claims, "iat")
        if exp < now - LEEWAY_SECONDS:
            raise AuthFailure("token expired")
        if iat > now + LEEWAY_SECONDS:
            raise AuthFailure("iat is in the future")
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise AuthFailure("token lifetime longer than an hour")
        if "nbf" in claims and _time_claim(claims, "nbf") > now + LEEWAY_SECONDS:
            raise AuthFailure("token not valid yet (nbf)")
        if not isinstance(claims.get("jti"), str) or not claims["jti"] or len(claims["jti"]) > MAX_JTI_LENGTH:
            raise AuthFailure("claim jti is not a non-empty string")

    def _key(self, client: TrustedClient, header: Mapping[str, Any]) -> Any:
        """The key a kid names: pinned in the configuration, else from the issuer's JWKS (jku), fetched when its
        cache is older than the TTL, and fetched again once when the kid is unknown (key rotation)."""
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthFailure("kid missing or not a string")
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in client.jku):
            raise AuthFailure("jku not allowed for this issuer")
        if kid in client.keys:
            return client.keys[kid]
        for url in [jku] if jku else client.jku:
            cached = client.remote.get(url)
            if cached is None or self.monotonic() - cached[0] > JWKS_TTL_SECONDS:
                self._fetch(client, url)
            key = client.remote.get(url, (0.0, {}))[1].get(kid)
            if key is None:
                self._fetch(client, url)
                key = client.remote.get(url, (0.0, {}))[1].get(kid)
            if key is not None:
                return key
        raise AuthFailure(f"unknown kid {kid!r}")

    def _fetch(self, client: TrustedClient, url: str) -> None:
        """Fetch one JWKS (at most once per cooldown per URL); on failure the previous keys stay until replaced."""
        with self._lock:
            now = self.monotonic()
            if now - client.fetched.get(url, -1e9) < JWKS_REFRESH_COOLDOWN:
                return
            client.fetched[url] = now
            if self.production and urlsplit(url).scheme != "https":
                log.warning("jku %s is not https: not fetched in production", url)
                return
            try:
                response = self.http.get(url, timeout=3, allow_redirects=False, headers={"Accept": "application/json"})
                if response.status_code != 200 or len(response.content) > JWKS_MAX_BYTES:
                    raise ValueError(f"HTTP {response.status_code}, {len(response.content)} bytes")
                client.remote[url] = (now, _jwks_keys(response.json(), url))
            except (requests.RequestException, ValueError, AuthConfigError) as exc:
                log.warning("JWKS %s could not be fetched: %s", url, type(exc).__name__)

    # -- FHIR server trust -------------------------------------------------------------------------------------
    def fhir_server_allowed(self, client: TrustedClient | None, server: str) -> bool:
        """May this client's request make the service call this FHIR server (with the client's token)?"""
        parts = urlsplit(server)
        try:
            parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if self.production and parts.scheme != "https":
            return False
        if client is None:
            return not self.production and parts.hostname in LOOPBACK_HOSTS
        return any(_under(server, base) for base in client.fhir_servers)


def _tenant(claims: Mapping[str, Any]) -> str | None:
    """The ``tenant`` claim if it is a short printable string (it goes to the log), else None."""
    value = claims.get("tenant")
    return value if isinstance(value, str) and 0 < len(value) <= MAX_JTI_LENGTH and value.isprintable() else None


def _time_claim(claims: Mapping[str, Any], name: str) -> float:
    """A NumericDate claim (RFC 7519: a JSON number of seconds); anything else, NaN and infinities included, refuses the token."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > MAX_NUMERIC_DATE:
        raise AuthFailure(f"claim {name} is not a NumericDate")
    return float(value)


def _same_url(candidate: str, expected: str) -> bool:
    """Whether an aud value names the URL called (a value that is not a URL names nothing)."""
    try:
        return normalise_url(candidate) == expected
    except ValueError:
        return False


def _under(server: str, base: str) -> bool:
    """True if server is the base URL or below it, both in their normal form (dot segments resolved, so a path
    cannot climb out of the base); a base with no port and no path stands for its whole host."""
    try:
        wanted, allowed = urlsplit(fhir_base(server)), urlsplit(fhir_base(base))
    except BadBaseUrl:
        return False
    if (wanted.scheme, wanted.hostname) != (allowed.scheme, allowed.hostname):
        return False
    if allowed.port is None and not allowed.path:
        return True
    return wanted.netloc == allowed.netloc and (wanted.path == allowed.path or wanted.path.startswith(allowed.path + "/"))
