"""Sending the protocol to a FHIR server as transactions of at most ``batch_size`` entries, in dependency order.

Many FHIR servers cap the entries of one transaction (50 is common), so the artifacts go in batches: what an
artifact refers to is stored in an earlier batch or the same one (CodeSystem, ValueSet, StructureDefinition,
Library, ActivityDefinition, PlanDefinition; within a type, a ValueSet that includes another comes after it).
Each batch is one transaction, stored whole or not at all; the first batch the server does not store stops the
push, and the error says which batches were stored before it.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from protocol.engine.bundle import artifact_bundle
from protocol.engine.content import Content

DEFAULT_BATCH_SIZE = 50


@dataclass
class EntryOutcome:
    """What the server said about one entry."""

    request: str
    status: str
    ok: bool
    detail: str = ""


@dataclass
class Batch:
    """One transaction of the push: its place in the plan and its entries."""

    number: int
    total: int
    bundle: dict[str, Any]

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.bundle["entry"]

    def requests(self) -> list[str]:
        """``PUT Type/id`` of each entry, in order."""
        return [f"{e['request']['method']} {e['request']['url']}" for e in self.entries]

    def summary(self) -> str:
        """How many entries of each resource type, in the batch's order: ``ValueSet 35, Library 1``."""
        counts = Counter(e["resource"]["resourceType"] for e in self.entries)
        return ", ".join(f"{rtype} {n}" for rtype, n in counts.items())

    def label(self) -> str:
        return f"batch {self.number} of {self.total}"


@dataclass
class BatchResult:
    """A batch the server stored, with the outcome of each entry."""

    batch: Batch
    outcomes: list[EntryOutcome]


@dataclass
class PushError(Exception):
    """The push stopped: the server could not be reached, refused a batch or answered nonsense.

    ``failed`` is the batch that was not stored (None when nothing was sent), ``stored`` the batches stored before
    it, ``outcome`` the server's OperationOutcome when it sent one, ``outcomes`` its entry outcomes when it answered
    entry by entry.
    """

    message: str
    failed: Batch | None = None
    stored: list[BatchResult] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    outcomes: list[EntryOutcome] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


def plan(content: Content, batch_size: int = DEFAULT_BATCH_SIZE) -> list[Batch]:
    """The transactions that store every artifact, in order, each of at most ``batch_size`` entries.

    When everything fits in one transaction it is the ``bundle`` command's transaction as it is (a server resolves
    the references among the entries of one transaction whatever their order)."""
    if batch_size < 1:
        raise ValueError("the batch size must be at least 1")
    whole = artifact_bundle(content, "transaction")
    if len(whole["entry"]) <= batch_size:
        return [Batch(1, 1, whole)]
    entries = dependency_order(whole["entry"])
    chunks = [entries[i:i + batch_size] for i in range(0, len(entries), batch_size)]
    batches = []
    for number, chunk in enumerate(chunks, start=1):
        bundle = {key: copy.deepcopy(value) for key, value in whole.items() if key != "entry"}
        bundle["id"] = f"{whole['id']}-batch-{number}"
        bundle["entry"] = chunk
        batches.append(Batch(number, len(chunks), bundle))
    return batches


def dependency_order(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with every artifact after those of its own type that it names by canonical URL.

    The entries come in type order already (``TYPE_ORDER``); within a type, the first entry whose references are
    all placed goes next, so the order changes only where it must. A cycle keeps the remaining entries as they are.
    """
    urls = {e["resource"].get("url"): i for i, e in enumerate(entries) if isinstance(e["resource"].get("url"), str)}
    needs: dict[int, set[int]] = {}
    for i, entry in enumerate(entries):
        text = json.dumps(entry["resource"])
        rtype = entry["resource"]["resourceType"]
        needs[i] = {j for url, j in urls.items()
                    if j != i and entries[j]["resource"]["resourceType"] == rtype
                    and re.search(re.escape(url) + r"(?=[\"'|])", text)}
    placed: list[int] = []
    waiting = list(range(len(entries)))
    while waiting:
        ready = next((i for i in waiting if needs[i] <= set(placed)), waiting[0])
        placed.append(ready)
        waiting.remove(ready)
    return [entries[i] for i in placed]


def push(batches: list[Batch], server: str, token: str | None = None, *, timeout: float = 60.0,
         session: requests.Session | None = None, on_stored: Callable[[BatchResult], None] | None = None) -> list[BatchResult]:
    """POST each batch to the server's base URL in order; ``on_stored`` hears of each batch once it is stored.

    Raises PushError at the first batch that is not stored, naming it and the batches stored before it."""
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http = session or requests.Session()
    stored: list[BatchResult] = []
    for batch in batches:
        result = _send(http, batch, server, headers, timeout, stored)
        stored.append(result)
        if on_stored is not None:
            on_stored(result)
    return stored


def _send(http: requests.Session, batch: Batch, server: str, headers: dict[str, str], timeout: float,
          stored: list[BatchResult]) -> BatchResult:
    """One transaction: its entry outcomes, or PushError saying why it was not stored."""
    def failure(message: str, **details: Any) -> PushError:
        return PushError(f"{batch.label()} was not stored: {message}", batch, list(stored), **details)

    try:
        response = http.post(server.rstrip("/"), json=batch.bundle, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise failure(f"{server} could not be reached ({type(exc).__name__})") from exc
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    outcome = body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None
    if response.status_code >= 300:
        raise failure(f"{server} refused the transaction: HTTP {response.status_code}{diagnostics(outcome)}", outcome=outcome)
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or not isinstance(body.get("entry"), list):
        raise failure(f"{server} answered HTTP {response.status_code} without a transaction-response Bundle", outcome=outcome)
    answers = body["entry"]
    if len(answers) != len(batch.entries):
        raise failure(f"{server} answered {len(answers)} entries for {len(batch.entries)} sent")
    outcomes = [_entry_outcome(sent, answer) for sent, answer in zip(batch.requests(), answers)]
    refused = [o for o in outcomes if not o.ok]
    if refused:
        raise failure(f"{server} refused {len(refused)} of its {len(outcomes)} entries", outcomes=outcomes)
    return BatchResult(batch, outcomes)


def _entry_outcome(sent: str, answer: Any) -> EntryOutcome:
    """The outcome of one entry from its ``response`` in the transaction-response (2xx is stored)."""
    response = answer.get("response") if isinstance(answer, dict) else None
    if not isinstance(response, dict):
        response = {}
    status = str(response.get("status", ""))
    return EntryOutcome(sent, status or "(none)", status[:1] == "2", diagnostics(response.get("outcome")))


def diagnostics(outcome: Any) -> str:
    """``: text; text`` from the issues of an OperationOutcome, or nothing."""
    texts = issue_lines(outcome)
    return (": " + "; ".join(texts)) if texts else ""


def issue_lines(outcome: Any) -> list[str]:
    """One line per issue of an OperationOutcome: severity, code, diagnostics (or details) and where."""
    if not (isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome"):
        return []
    lines = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or ((issue.get("details") or {}).get("text") if isinstance(issue.get("details"), dict) else None)
        where = issue.get("expression") or issue.get("location")
        parts = [str(issue.get("severity", "")), str(issue.get("code", "")), str(text or "")]
        line = " ".join(p for p in parts if p)
        if isinstance(where, list) and where:
            line += f" (at {', '.join(str(w) for w in where)})"
        lines.append(line)
    return lines
