"""Prefetch: templates generated from the data requirements, and the data a hook call gets from them.

Templates keep to the query subset CDS Hooks recommends: a Patient read, and type searches restricted
to the patient with token parameters (``code=system|code,...``). A data requirement whose code list
would make the URL too long is fetched by patient only; the engine filters by code locally anyway.

On a call, what the client prefetched is used as is (``null`` means "no data"); a key that is missing,
or that came back as an OperationOutcome, is fetched from ``fhirServer`` with the bearer token, inside
the request's time budget, following searchset pages up to a limit. Medications that orders reference
but nobody sent are fetched too, so a drug is never missed because it was coded on a Medication resource.
When data is needed and cannot be had, the call fails with 412.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from protocol.engine import CompiledPlan, Engine
from service.errors import PreconditionFailed

PATIENT_TOKEN = "{{context.patientId}}"
#: FHIR search parameter for a data requirement's code path, where it is not the path itself.
SEARCH_PARAMETERS = {("MedicationRequest", "medication"): "code", ("MedicationStatement", "medication"): "code",
                     ("MedicationAdministration", "medication"): "code", ("MedicationDispense", "medication"): "code",
                     ("Immunization", "vaccineCode"): "vaccine-code"}


# -- templates ----------------------------------------------------------------------------------------------


def data_requirements(plan: CompiledPlan) -> list[Mapping[str, Any]]:
    """Every data requirement a plan reads: its libraries' and its actions' inputs."""
    found = [dr for library in plan.libraries for dr in library.data.values()]
    stack = list(plan.actions)
    while stack:
        action = stack.pop()
        found.extend(action.inputs.values())
        stack.extend(action.children)
    return found


def prefetch_templates(engine: Engine, plan: CompiledPlan, url_limit: int) -> dict[str, str]:
    """Prefetch templates for a plan: the patient, then one search per resource type it reads."""
    templates = {"patient": f"Patient/{PATIENT_TOKEN}"}
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for requirement in data_requirements(plan):
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
    """The template with its ``{{context.x}}`` tokens filled; None if a token has no value."""
    out = template
    while "{{" in out:
        start = out.index("{{")
        end = out.index("}}", start)
        token = out[start + 2:end].strip()
        value = context.get(token[len("context."):]) if token.startswith("context.") else None
        if not isinstance(value, str) or not value:
            return None
        out = out[:start] + value + out[end + 2:]
    return out


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
    """A prefetch value that reports an error rather than data: an OperationOutcome, or a Bundle holding only errors."""
    if not isinstance(value, dict):
        return False
    if value.get("resourceType") == "OperationOutcome":
        return True
    if value.get("resourceType") != "Bundle" or not isinstance(value.get("entry"), list):
        return False
    entries = [entry for entry in value["entry"] if isinstance(entry, dict)]
    for entry in entries:  # stops at the first entry that is not an error outcome: a Bundle with data is not a failure
        resource = entry.get("resource")
        if not (isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome" and _reports_error(resource)):
            return False
    return bool(entries)


def _reports_error(outcome: dict[str, Any]) -> bool:
    issues = outcome.get("issue")
    return isinstance(issues, list) and any(isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in issues)


class FhirFetcher:
    """GET requests to the client's FHIR server, with its bearer token, inside a deadline."""

    def __init__(self, base: str, token: str | None, deadline: float, max_pages: int, session: requests.Session | None = None):
        self.base = base.rstrip("/") + "/"
        self.token = token
        self.deadline = deadline
        self.max_pages = max_pages
        self.session = session or requests.Session()
        origin = urlsplit(self.base)
        self._origin = (origin.scheme, origin.netloc)

    def _get(self, url: str) -> dict[str, Any]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0.05:
            raise TimeoutError("time budget spent")
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            raise PermissionError("link to another server")
        headers = {"Accept": "application/fhir+json, application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        response = self.session.get(url, headers=headers, timeout=remaining, allow_redirects=False)
        if response.status_code != 200:
            raise IOError(f"HTTP {response.status_code}")
        body = response.json()
        if not isinstance(body, dict) or "resourceType" not in body:
            raise ValueError("not a FHIR resource")
        return body

    def read(self, relative: str) -> tuple[Any, int]:
        """A read or a search (all pages, up to the limit), as the prefetch value would have been."""
        body = self._get(urljoin(self.base, relative))
        pages = 1
        if body.get("resourceType") != "Bundle":
            return body, pages
        entries = list(body.get("entry") or [])
        while pages < self.max_pages:
            following = next((link.get("url") for link in body.get("link") or [] if link.get("relation") == "next"), None)
            if not following:
                break
            body = self._get(following)
            pages += 1
            entries.extend(body.get("entry") or [])
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}, pages


def gather(templates: Mapping[str, str], request: Mapping[str, Any], settings: Any, started: float,
           session: requests.Session | None = None, drafts: list[Any] | None = None) -> tuple[list[Any], PrefetchReport]:
    """The data for a call: prefetch as sent, completed from fhirServer; 412 when something needed is missing.

    ``drafts`` (the hook's draft orders) are not returned, but a Medication they reference is fetched too.
    """
    drafts = drafts or []
    report = PrefetchReport()
    supplied = request.get("prefetch") or {}
    context = request.get("context") or {}
    data: list[Any] = []
    missing: dict[str, str] = {}
    for key, template in templates.items():
        if key in supplied and not failed(supplied[key]):
            if supplied[key] is None:
                report.empty.append(key)
            else:
                report.supplied.append(key)
                data.append(supplied[key])
            continue
        url = render(template, context)
        if url is None:
            raise PreconditionFailed(f"prefetch '{key}' was not sent and its query cannot be built from the context")
        missing[key] = url
    server = request.get("fhirServer")
    if not server:
        if missing:
            raise PreconditionFailed("prefetch missing and no fhirServer to fetch it from", details=[f"missing: {k}" for k in sorted(missing)])
        unresolved = _unresolved_medications(data + drafts)
        if unresolved:
            raise PreconditionFailed("orders reference medications that were not sent, and there is no fhirServer to read them from",
                                     details=sorted(unresolved))
        return data, report
    token = (request.get("fhirAuthorization") or {}).get("access_token")
    fetcher = FhirFetcher(server, token, started + settings.request_budget, settings.max_pages, session)
    if missing:
        with ThreadPoolExecutor(max_workers=min(settings.fetch_workers, len(missing))) as pool:
            results = dict(zip(missing, pool.map(lambda url: _try(fetcher.read, url), missing.values())))
        problems = [f"{key}: {results[key][1]}" for key in sorted(results) if results[key][1] is not None]
        if problems:
            raise PreconditionFailed("prefetch data could not be fetched from the FHIR server", details=problems)
        for key, ((value, pages), _) in results.items():
            data.append(value)
            report.fetched.append(key)
            report.pages += pages
    references = _unresolved_medications(data + drafts)
    if references:
        found = [_try(fetcher.read, ref) for ref in sorted(references)]
        problems = [ref for ref, (_, problem) in zip(sorted(references), found) if problem is not None]
        if problems:
            raise PreconditionFailed("medications referenced by orders could not be fetched", details=[f"{r}" for r in problems])
        data.extend(value for (value, _), _ in found)
        report.medications_fetched = len(found)
    return data, report


def _try(fn: Any, *args: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except (requests.RequestException, IOError, ValueError, TimeoutError, PermissionError) as exc:
        return None, _reason(exc)


def _reason(exc: Exception) -> str:
    if isinstance(exc, (requests.Timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, PermissionError):
        return "refused a link to another server"
    if isinstance(exc, ValueError):
        return "answer was not FHIR JSON"
    return str(exc) or type(exc).__name__


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
