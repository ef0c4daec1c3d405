"""Prefetch: templates generated from the data requirements, and the data a hook call gets from them.

Templates keep to the query subset CDS Hooks recommends: a Patient read, and type searches restricted
to the patient with token parameters (``code=system|code,...``). A data requirement whose code list
would make the URL too long is fetched by patient only; the engine filters by code locally anyway.

On a call, what the client prefetched is used as is (``null`` means "no data"). A key that is missing, or
whose value is not the whole answer (an OperationOutcome, a searchset holding an error outcome, a first page
with a ``next`` link), is read from ``fhirServer`` with the bearer token, inside the request's time budget,
asking for large pages and following them up to a limit. Medications that orders reference but nobody sent
are fetched too, so a drug is never missed because it was coded on a Medication resource.

Incomplete data is missing data (PROTOCOL.md §4a): a query that cannot be read completely (a ``next`` link
left after the last page allowed, a page that fails or reports an error, the time budget spent) fails the
call with 412, never an answer built on part of the record. The 412 names the key and its query template.

The time budget (``request_budget``) bounds the whole of it, whatever the FHIR server does: connecting, headers
and body of every page and every read, in parallel. Bodies are read a chunk at a time with the deadline checked
between chunks, and no more than ``max_body_bytes`` in all (what a client may send as prefetch is what may be
read for it). At the deadline the call stops waiting, and every connection still open is shut, so that no
thread stays blocked on a server that drips or hangs.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import orjson
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from protocol.engine.apply import CompiledPlan, Engine
from protocol.engine.jsondata import JsonShapeError, check_shape
from protocol.engine.requirements import data_requirements
from service.cds_hooks.hook_request import FHIR_ID
from service.errors import PreconditionFailed
from service.urls import below, fhir_base

log = logging.getLogger("back_spasm_cds.prefetch")

PATIENT_TOKEN = "{{context.patientId}}"
#: FHIR search parameter for a data requirement's code path, where it is not the path itself.
SEARCH_PARAMETERS = {("MedicationRequest", "medication"): "code", ("MedicationStatement", "medication"): "code",
                     ("MedicationAdministration", "medication"): "code", ("MedicationDispense", "medication"): "code",
                     ("Immunization", "vaccineCode"): "vaccine-code"}
#: ``_count`` asked of searches read from ``fhirServer``: large pages, so that few are needed.
PAGE_SIZE = 1000
#: Largest piece of an answer read at once; the deadline is checked between pieces.
READ_CHUNK = 64 * 1024


# -- templates ----------------------------------------------------------------------------------------------


def prefetch_templates(engine: Engine, plan: CompiledPlan, url_limit: int) -> dict[str, str]:
    """Prefetch templates for a plan: the patient, then one search per resource type it reads."""
    templates = {"patient": f"Patient/{PATIENT_TOKEN}"}
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for requirement in data_requirements(engine.content, plan.resource):
        by_type.setdefault(requirement.get("type", ""), []).append(requirement)
    for rtype in sorted(t for t in by_type if t and t != "Patient"):
        base = f"{rtype}?patient={PATIENT_TOKEN}"
        query = _code_query(engine, rtype, by_type[rtype])
        key = rtype[0].lower() + rtype[1:]
        templates[key] = base + query if query and len(base + query) <= url_limit else base
    return templates


def _code_query(engine: Engine, rtype: str, requirements: list[Mapping[str, Any]]) -> str | None:
    """``&param=system|code,...`` when every requirement of the type filters on the same path, else None."""
    paths = set()
    codes: set[tuple[str, str]] = set()
    for requirement in requirements:
        filters = requirement.get("codeFilter") or []
        if len(filters) != 1:
            return None
        cf = filters[0]
        paths.add(cf.get("path"))
        if cf.get("valueSet"):
            if cf["valueSet"] not in engine.content.terminology:
                return None
            codes |= engine.content.terminology.codes(cf["valueSet"])
        codes |= {(c.get("system"), c.get("code")) for c in cf.get("code") or []}
    if len(paths) != 1 or not codes:
        return None
    path = paths.pop() or "code"
    parameter = SEARCH_PARAMETERS.get((rtype, path), path.replace(".", "-"))
    return f"&{parameter}=" + ",".join(f"{system}|{code}" for system, code in sorted(codes))


def render(template: str, context: Mapping[str, Any]) -> str | None:
    """The template with its ``{{context.x}}`` tokens filled in one pass; None if it cannot be filled safely.

    The result is a URL, so every value must be a FHIR id (1 to 64 letters, digits, '-' or '.'); a token without
    such a value, or a token left open, gives None. Values are data, never read again as a template.
    """
    parts: list[str] = []
    position = 0
    while (start := template.find("{{", position)) >= 0:
        end = template.find("}}", start + 2)
        value = _token_value(template[start + 2:end].strip(), context) if end >= 0 else None
        if value is None:
            return None
        parts += (template[position:start], value)
        position = end + 2
    parts.append(template[position:])
    return "".join(parts)


def _token_value(token: str, context: Mapping[str, Any]) -> str | None:
    """The context value a ``context.x`` token names, if it is a FHIR id."""
    if not token.startswith("context.") or not isinstance(context, Mapping):
        return None
    value = context.get(token[len("context."):])
    return value if isinstance(value, str) and FHIR_ID.fullmatch(value) else None


# -- satisfying a call --------------------------------------------------------------------------------------


@dataclass
class PrefetchReport:
    """What the data of a call came from, for logs (key names and counts only)."""

    supplied: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    pages: int = 0
    medications_fetched: int = 0


def failed(value: Any) -> bool:
    """A prefetch value that does not hold the whole answer: an error outcome, a Bundle holding one, or a first page only."""
    return _problem(value) is not None


def _problem(value: Any) -> str | None:
    """Why a prefetch value counts as missing (a phrase for the 412 answer), or None when it can be used as sent.

    On the path of every supplied value: the ``next`` link is looked at before the entries, and the entries only
    until the first error outcome.
    """
    if not isinstance(value, dict):
        return None
    rtype = value.get("resourceType")
    if rtype == "OperationOutcome":
        return "was sent as an OperationOutcome"
    if rtype != "Bundle":
        return None
    if _next_link(value) is not None:
        return "is incomplete: only its first page was sent (it has a next link)"
    if _error_entry(value):
        return "holds an OperationOutcome entry reporting an error"
    return None


def _error_entry(bundle: Mapping[str, Any]) -> bool:
    """Whether a Bundle has an OperationOutcome entry with an error or fatal issue (warnings are fine)."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return False
    for entry in entries:
        if isinstance(entry, dict):
            resource = entry.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome" and _reports_error(resource):
                return True
    return False


def _reports_error(outcome: Mapping[str, Any]) -> bool:
    issues = outcome.get("issue")
    return isinstance(issues, list) and any(isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in issues)


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    """The URL of a Bundle's ``next`` link; "" for a next link without a usable URL; None when there is none."""
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else ""
    return None


def with_page_size(relative: str, size: int = PAGE_SIZE) -> str:
    """A search URL asking for ``_count=size`` results a page; reads, and queries that set ``_count``, are unchanged."""
    rest, hash_, fragment = relative.partition("#")
    path, question, query = rest.partition("?")
    if _is_read(path):
        return relative
    parameters = [p for p in query.split("&") if p]
    if any(p.partition("=")[0] == "_count" for p in parameters):
        return relative
    return f"{path}?{'&'.join([*parameters, f'_count={size}'])}{hash_}{fragment}"


def _is_read(path: str) -> bool:
    """Whether a relative path reads one resource (``Type/id``, ``Type/id/_history/vid``) rather than searching."""
    segments = path.strip("/").split("/")
    if len(segments) == 2:
        return not segments[1].startswith("_")
    return len(segments) == 4 and segments[2] == "_history"


def query_label(template: str) -> str:
    """How an error answer names a query: its template (tokens unrendered), long code lists shortened to ``…``."""
    path, question, query = template.partition("?")
    if not question:
        return path
    parameters = []
    for parameter in query.split("&"):
        name, equals, value = parameter.partition("=")
        if len(value) > 40 and "{{" not in value:
            value = "…"
        parameters.append(f"{name}{equals}{value}")
    return f"{path}?{'&'.join(parameters)}"


class ReadFailed(Exception):
    """A query the FHIR server did not answer completely; the message is safe to send (no data, no URL)."""


# -- connections a call can cut -------------------------------------------------------------------------------


class _Sockets:
    """The sockets of one call's requests, so that all of them can be shut at once when the call stops waiting.

    Shutting a socket wakes a thread blocked on it at once (its read fails), which a timeout cannot do for a
    server that sends a byte now and then. A socket that connects after that is shut as soon as it connects.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[Any] = []
        self.shut_down = False

    def add(self, sock: Any) -> None:
        with self._lock:
            if not self.shut_down:
                self._sockets.append(sock)
                return
        _shut(sock)

    def shut(self) -> None:
        with self._lock:
            self.shut_down = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)


def _shut(sock: Any) -> None:
    """Shut a socket both ways (a TLS socket too, without a closing handshake); one already closed is left alone."""
    if isinstance(sock, socket.socket):
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


#: The sockets of the call whose request the current thread is making (set around each request).
_CALL_SOCKETS: ContextVar[_Sockets | None] = ContextVar("prefetch_call_sockets", default=None)


class _TrackedConnection:
    """A urllib3 connection whose socket goes to the call making the request once connected.

    Connecting is bounded by the connect timeout, the TLS handshake included (Python's TLS operations take the
    socket timeout as a deadline for the whole operation); what follows is what a server can drip.
    """

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        sockets = _CALL_SOCKETS.get()
        if sockets is not None:
            sockets.add(self.sock)  # type: ignore[attr-defined]


class _HTTPConnection(_TrackedConnection, HTTPConnection):
    pass


class _HTTPSConnection(_TrackedConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_TRACKED_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _CallAdapter(HTTPAdapter):
    """The transport of one call: connections whose sockets the call can shut, shared with no other call."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _TRACKED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _TRACKED_POOLS
        return manager


def _keep_authorization(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Request auth that changes nothing: the Authorization header is the FHIR token or none, never a .netrc entry."""
    return request


# -- reading from the FHIR server -----------------------------------------------------------------------------


class FhirFetcher:
    """GET requests to the client's FHIR server, with its bearer token, inside a deadline and a byte allowance.

    ``session`` gives the configuration (proxies, certificate checks, default headers); the connections are the
    fetcher's own, and :meth:`close` shuts those still open. Safe to use from several threads.
    """

    def __init__(self, base: str, token: str | None, deadline: float, max_pages: int, session: requests.Session | None = None,
                 *, max_bytes: int):
        self.base = base.rstrip("/") + "/"
        self.token = token
        self.deadline = deadline
        self.max_pages = max_pages
        self.max_bytes = max_bytes
        self.session = session or requests.Session()
        self._adapter = _CallAdapter()
        self._sockets = _Sockets()
        self._lock = threading.Lock()
        self._bytes_left = max_bytes
        self._base = fhir_base(self.base)

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()

    def close(self) -> None:
        """Stop: every connection still open is shut (a thread blocked on one wakes at once) and no new one is used."""
        self._sockets.shut()
        self._adapter.close()

    def _stopped(self) -> bool:
        return self.remaining() <= 0 or self._sockets.shut_down

    def _within_base(self, url: str) -> bool:
        """Whether a URL to read is the base or below it (a next link may not leave the FHIR server's base path)."""
        return below(url, self._base)

    def _get(self, url: str) -> dict[str, Any]:
        """One GET on the FHIR server: a FHIR resource that is not an OperationOutcome, or an exception."""
        remaining = self.remaining()
        if remaining <= 0.05 or self._sockets.shut_down:
            raise TimeoutError("time budget spent")
        if not self._within_base(url):
            raise PermissionError("link outside the FHIR server's base")
        headers = {**self.session.headers, "Accept": "application/fhir+json, application/json"}
        if isinstance(self.token, str) and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        prepared = requests.Request("GET", url, headers=headers, auth=_keep_authorization).prepare()
        settings = self.session.merge_environment_settings(prepared.url, {}, True, None, None)
        calling = _CALL_SOCKETS.set(self._sockets)
        try:
            response = self._adapter.send(prepared, stream=True, timeout=(remaining, remaining), verify=settings["verify"],
                                          cert=settings["cert"], proxies=settings["proxies"])
            try:
                if response.status_code != 200:
                    raise Unanswered(f"HTTP {response.status_code}")
                raw = self._body(response)
            finally:
                response.close()
        finally:
            _CALL_SOCKETS.reset(calling)
        body = orjson.loads(raw)
        check_shape(body)
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise ValueError("not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise ReadFailed("the server answered with an OperationOutcome")
        return body

    def _body(self, response: requests.Response) -> bytes:
        """The body of an answer, read a chunk at a time within the deadline and the call's byte allowance."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._bytes_left:
            raise ReadFailed(self._too_large())
        chunks = []
        while not self._stopped():
            chunk = response.raw.read1(READ_CHUNK, decode_content=True)
            if not chunk:
                break
            self._spend(len(chunk))
            chunks.append(chunk)
        if self._stopped():
            raise TimeoutError("time budget spent")
        return b"".join(chunks)

    def _spend(self, size: int) -> None:
        """Count bytes read against the call's allowance; past it, the read fails (it bounds the memory a call holds)."""
        with self._lock:
            self._bytes_left -= size
            if self._bytes_left < 0:
                raise ReadFailed(self._too_large())

    def _too_large(self) -> str:
        return f"the answers are larger than the {self.max_bytes} bytes a call may read"

    def read(self, relative: str) -> tuple[Any, int]:
        """A read, or a search with every page (searches ask for large pages), as the prefetch value would have been.

        Anything short of the whole answer raises: a ``next`` link left after ``max_pages`` pages, a page that is
        not a Bundle, or one with an OperationOutcome entry reporting an error.
        """
        body = self._get(urljoin(self.base, with_page_size(relative)))
        if body["resourceType"] != "Bundle":
            return body, 1
        pages = 1
        entries = self._entries(body, pages)
        while (following := _next_link(body)) is not None:
            if not following:
                raise ReadFailed(f"page {pages} has a next link without a URL")
            if pages >= self.max_pages:
                raise ReadFailed(f"more than {self.max_pages} pages (a next link is left after the last page read)")
            body = self._get(urljoin(self.base, following))
            pages += 1
            if body["resourceType"] != "Bundle":
                raise ReadFailed(f"page {pages} is not a Bundle")
            entries.extend(self._entries(body, pages))
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}, pages

    @staticmethod
    def _entries(page: Mapping[str, Any], number: int) -> list[Any]:
        """The entries of a searchset page; an error outcome among them means the page failed."""
        entries = page.get("entry")
        if entries is None:
            return []
        if not isinstance(entries, list):
            raise ValueError("Bundle.entry is not a list")
        if _error_entry(page):
            raise ReadFailed(f"page {number} holds an OperationOutcome entry reporting an error")
        return list(entries)


def _read_all(fetcher: FhirFetcher, queries: Mapping[str, str], workers: int) -> dict[str, tuple[Any, str | None]]:
    """Each query read in parallel: ``(value, None)`` or ``(None, why it failed)`` by name, by the fetcher's deadline.

    Waiting stops at the deadline (what has not arrived has NO_ANSWER, logged as timed out) or at the first failure (the rest is
    abandoned: the answer is a 412 anyway). Threads still working are left to end on their own; the caller shuts
    their connections with :meth:`FhirFetcher.close`, so none stays blocked.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(queries))), thread_name_prefix="prefetch")
    try:
        futures: dict[Future[Any], str] = {pool.submit(_try, fetcher.read, query): name for name, query in queries.items()}
        results: dict[str, tuple[Any, str | None]] = {}
        try:
            for future in as_completed(futures, timeout=max(0.0, fetcher.remaining())):
                results[futures[future]] = future.result()
                if results[futures[future]][1] is not None:
                    break
        except TimeoutError:
            pass
        left = _no_answer("timed out") if fetcher.remaining() <= 0 else "abandoned after another query failed"
        return {name: results.get(name, (None, left)) for name in queries}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def gather(templates: Mapping[str, str], request: Mapping[str, Any], settings: Any, started: float,
           session: requests.Session | None = None, drafts: list[Any] | None = None,
           server_refused: bool = False) -> tuple[list[Any], PrefetchReport]:
    """The data for a call: prefetch as sent, completed from fhirServer; 412 when something needed is missing.

    A supplied value that is an error outcome, holds one, or is only a first page counts as missing: it is read
    whole from fhirServer with its template. ``drafts`` (the hook's draft orders) are not returned, but a
    Medication they reference is fetched too. A 412 names each key and its query template, never a rendered URL.
    Reading from fhirServer ends by ``started + request_budget`` whatever the server does. ``server_refused`` says
    the request named a fhirServer the client may not name (the caller dropped it): a 412 then says so.
    """
    drafts = drafts or []
    report = PrefetchReport()
    supplied = request.get("prefetch") or {}
    context = request.get("context") or {}
    data: list[Any] = []
    missing: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for key, template in templates.items():
        if key in supplied:
            value = supplied[key]
            problem = _problem(value)
            if problem is None:
                if value is None:
                    report.empty.append(key)
                else:
                    report.supplied.append(key)
                    data.append(value)
                continue
        else:
            problem = "was not sent"
        url = render(template, context)
        if url is None:
            raise PreconditionFailed(f"prefetch '{key}' {problem} and its query cannot be built from the context",
                                     details=[f"{key}: {query_label(template)}"])
        missing[key] = url
        reasons[key] = problem
    server = request.get("fhirServer")
    if not server:
        refused = "the request's fhirServer is not on the allow-list for this client, so it was not read"
        if missing:
            raise PreconditionFailed("prefetch data missing or incomplete, and "
                                     + (refused if server_refused else "no fhirServer to read it from"),
                                     details=[f"{k} ({query_label(templates[k])}): {reasons[k]}" for k in sorted(missing)])
        unresolved = _unresolved_medications(data + drafts)
        if unresolved:
            raise PreconditionFailed("orders reference medications that were not sent, and "
                                     + (refused if server_refused else "there is no fhirServer to read them from"),
                                     details=sorted(unresolved))
        return data, report
    authorization = request.get("fhirAuthorization")
    token = authorization.get("access_token") if isinstance(authorization, Mapping) else None
    fetcher = FhirFetcher(server, token, started + settings.request_budget, settings.max_pages, session,
                          max_bytes=settings.max_body_bytes)
    try:
        _read_missing(fetcher, missing, templates, settings.fetch_workers, data, report)
        _read_medications(fetcher, data + drafts, settings.fetch_workers, data, report)
    finally:
        fetcher.close()
    return data, report


def _read_missing(fetcher: FhirFetcher, missing: Mapping[str, str], templates: Mapping[str, str], workers: int,
                  data: list[Any], report: PrefetchReport) -> None:
    """Read the missing prefetch keys into ``data``; 412 naming every key that could not be read whole."""
    if not missing:
        return
    results = _read_all(fetcher, missing, workers)
    problems = [f"{key} ({query_label(templates[key])}): {problem}" for key, (_, problem) in sorted(results.items())
                if problem is not None]
    if problems:
        raise PreconditionFailed("prefetch data could not be read completely from the FHIR server", details=problems)
    for key, ((value, pages), _) in results.items():
        data.append(value)
        report.fetched.append(key)
        report.pages += pages


def _read_medications(fetcher: FhirFetcher, known: list[Any], workers: int, data: list[Any], report: PrefetchReport) -> None:
    """Read the Medications that orders reference and nobody sent into ``data``; 412 naming those that could not be."""
    references = sorted(_unresolved_medications(known))
    if not references:
        return
    if any(not FHIR_ID.fullmatch(ref.partition("/")[2]) for ref in references):
        raise PreconditionFailed("medications referenced by orders could not be read completely",
                                 details=["a Medication reference whose id is not a FHIR id cannot be read"])
    results = _read_all(fetcher, {ref: ref for ref in references}, workers)
    problems = [f"{ref}: {problem}" for ref, (_, problem) in sorted(results.items()) if problem is not None]
    if problems:
        raise PreconditionFailed("medications referenced by orders could not be read completely", details=problems)
    data.extend(value for (value, _), _ in results.values())
    report.medications_fetched = len(results)


def _try(fn: Any, *args: Any) -> tuple[Any, str | None]:
    """``fn(*args)`` and None, or None and why it failed (a phrase safe to send: no URL, token or data)."""
    try:
        return fn(*args), None
    except (ReadFailed, requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError,
            ValueError) as exc:
        return None, _reason(exc)


#: What a 412 says of a query the FHIR server gave no usable answer to. One phrase for a timeout, a refused or
#: reset connection, an HTTP error status and an answer that is not FHIR JSON, so that the answer cannot tell a
#: closed port from an open one; the log says which it was.
NO_ANSWER = "no usable answer from the FHIR server (it timed out, could not be reached or answered with an error; the service log says which)"


class Unanswered(ReadFailed):
    """A read that got no usable answer at the HTTP level (an error status); said as NO_ANSWER to the client."""


def _reason(exc: Exception) -> str:
    """A failed request in a few words; exception messages of other libraries can quote the URL, so none is used.

    Failures below FHIR (time, connection, HTTP status, not JSON) all read as NO_ANSWER and are logged by kind;
    what the FHIR server said (an error outcome, too many pages, a link outside its base, too many bytes) is told.
    """
    if isinstance(exc, Unanswered):
        return _no_answer(str(exc))
    if isinstance(exc, ReadFailed):
        return str(exc)
    if isinstance(exc, (requests.Timeout, TimeoutError, urllib3.exceptions.TimeoutError)):
        return _no_answer("timed out")
    if isinstance(exc, PermissionError):
        return "refused a link outside the FHIR server's base URL"
    if isinstance(exc, JsonShapeError):
        return "answer nested too deeply or holding a number beyond 64 bits"
    if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)):
        return _no_answer("connection failed")
    if isinstance(exc, ValueError) and not isinstance(exc, requests.RequestException):
        return _no_answer("answer was not FHIR JSON")
    return _no_answer(f"request failed ({type(exc).__name__})")


def _no_answer(kind: str) -> str:
    log.warning("FHIR server read failed", extra={"fields": {"event": "fhir-read-failed", "reason": kind}})
    return NO_ANSWER


def _resources(data: Iterable[Any]) -> Iterable[dict[str, Any]]:
    for value in data:
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            entries = value.get("entry")
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    yield entry["resource"]
        elif isinstance(value, dict):
            yield value


def _unresolved_medications(data: list[Any]) -> set[str]:
    """``Medication/id`` references of medication orders and statements that no supplied resource answers."""
    wanted = set()
    known = set()
    for resource in _resources(data):
        if resource.get("resourceType") == "Medication":
            known.add(f"Medication/{resource.get('id')}")
            continue
        reference = resource.get("medicationReference")
        ref = reference.get("reference") if isinstance(reference, dict) else None
        if isinstance(ref, str) and not ref.startswith("#"):
            relative = "/".join(ref.split("/_history/")[0].rstrip("/").split("/")[-2:])
            if relative.startswith("Medication/"):
                wanted.add(relative)
    return wanted - known
