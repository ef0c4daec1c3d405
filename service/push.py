"""Sending the protocol to a FHIR server as one transaction, and reporting the outcome entry by entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from protocol.bundle import artifact_bundle
from protocol.content import Content


@dataclass
class EntryOutcome:
    """What the server said about one entry."""

    request: str
    status: str
    ok: bool
    detail: str = ""


class PushError(Exception):
    """The server could not be reached or refused the whole transaction."""


def push(content: Content, server: str, token: str | None = None, timeout: float = 60.0,
         session: requests.Session | None = None) -> list[EntryOutcome]:
    """POST the transaction Bundle to the server's base URL; one outcome per entry, in order."""
    bundle = artifact_bundle(content, "transaction")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    http = session or requests.Session()
    try:
        response = http.post(server.rstrip("/"), json=bundle, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise PushError(f"{server}: {type(exc).__name__}: the server could not be reached") from exc
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if response.status_code >= 300:
        raise PushError(f"{server} refused the transaction: HTTP {response.status_code}{_diagnostics(body)}")
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or not isinstance(body.get("entry"), list):
        raise PushError(f"{server} answered HTTP {response.status_code} without a transaction-response Bundle")
    requests_sent = [f"{e['request']['method']} {e['request']['url']}" for e in bundle["entry"]]
    answers = body["entry"]
    if len(answers) != len(requests_sent):
        raise PushError(f"{server} answered {len(answers)} entries for {len(requests_sent)} sent")
    outcomes = []
    for sent, answer in zip(requests_sent, answers):
        status = str(((answer or {}).get("response") or {}).get("status", ""))
        ok = status[:1] == "2"
        outcomes.append(EntryOutcome(sent, status or "(none)", ok, _diagnostics(((answer or {}).get("response") or {}).get("outcome"))))
    return outcomes


def _diagnostics(outcome: Any) -> str:
    if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome":
        texts = [i.get("diagnostics") or i.get("code", "") for i in outcome.get("issue") or [] if isinstance(i, dict)]
        return (": " + "; ".join(t for t in texts if t)) if texts else ""
    return ""
