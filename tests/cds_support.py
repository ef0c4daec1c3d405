"""Shared helpers for the clinical tests: run the two PlanDefinitions and read the applied action tree.

The treatment pathway answers patient-view; each of its top-level actions is one card. The order review
answers order-select and order-sign, once per reviewed draft order. Helpers here find actions by id
anywhere in the tree, read the recommendation code an action carries, and tell which phase the plan
card chose, so the tests can state expectations in the protocol's own terms.
"""

from __future__ import annotations

import calendar
import copy
import json
import shutil
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from protocol.engine.apply import AppliedAction, ApplyResult, Engine
from protocol.engine.content import CONTENT_DIR, PUBLICATION_FILE, PUBLICATION_NAME, load_content
from tests.patients import CLOCK, UCUM, Patient

PATHWAY = "back-spasm-treatment-pathway"
REVIEW = "back-spasm-order-review"
RECOMMENDATIONS = "http://example.org/fhir/back-spasm-cds/CodeSystem/back-spasm-recommendations"
VS = "http://example.org/fhir/back-spasm-cds/ValueSet/"

#: The patient-view cards that are about cyclobenzaprine (a proposal, the reason it is withheld, or a warning).
MEDICATION_CARDS = frozenset({
    "cyclobenzaprine-proposal", "withheld-maoi", "withheld-cardiac",
    "withheld-allergy", "withheld-hepatic", "withheld-older-adult", "withheld-duplicate", "cyclobenzaprine-beyond-21-days",
})


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The shipped protocol, compiled once for the test module."""
    return Engine(load_content())


# ---------------------------------------------------------------------------------- running the protocol


def view(engine: Engine, patient: Patient | list, now: datetime = CLOCK, subject: str | None = None) -> ApplyResult:
    """The treatment pathway (patient-view) for a patient record."""
    resources = patient.resources if isinstance(patient, Patient) else patient
    if subject is None:
        subject = patient.id if isinstance(patient, Patient) else next(r["id"] for r in resources if r["resourceType"] == "Patient")
    return engine.apply(PATHWAY, resources, now, subject)


def review(engine: Engine, patient: Patient, draft: dict, others: Iterable[dict] = (), now: datetime = CLOCK) -> ApplyResult:
    """The order review of one draft order, with any other orders drafted in the same session."""
    drafts = [draft, *others]
    return engine.apply(REVIEW, patient.resources + drafts, now, patient.id,
                        parameters={"draftOrder": draft, "draftOrders": drafts})


# ---------------------------------------------------------------------------------- reading the result


def cards(result: ApplyResult) -> set[str]:
    """Ids of the top-level actions: the cards a hook would return."""
    return {a.fields.get("id") for a in result.actions}


def walk(actions: Iterable[AppliedAction]) -> Iterator[AppliedAction]:
    """Every applied action, depth first."""
    for action in actions:
        yield action
        yield from walk(action.children)


def all_ids(result: ApplyResult) -> set[str]:
    return {a.fields.get("id") for a in walk(result.actions)}


def find(result: ApplyResult, action_id: str) -> AppliedAction | None:
    """The applied action with that id, anywhere in the tree."""
    return next((a for a in walk(result.actions) if a.fields.get("id") == action_id), None)


def get(result: ApplyResult, action_id: str) -> AppliedAction:
    """Like find, but the action must be there."""
    found = find(result, action_id)
    assert found is not None, f"action {action_id!r} not applied; applied: {sorted(all_ids(result))}"
    return found


def rule_codes(action: AppliedAction) -> set[str]:
    """The recommendation or safety-rule codes (e.g. 'S1', 'heat') an action carries."""
    return {c.get("code") for cc in action.fields.get("code") or [] for c in cc.get("coding") or []
            if c.get("system") == RECOMMENDATIONS}


def phase(result: ApplyResult) -> int | None:
    """The phase the plan card chose (its phase-N child), or None without a plan card."""
    plan = find(result, "phase-plan")
    if plan is None:
        return None
    chosen = [c.fields["id"] for c in plan.children if c.fields.get("id", "").startswith("phase-")]
    assert len(chosen) == 1, f"the plan card must hold exactly one phase, got {chosen}"
    return int(chosen[0].split("-")[1])


def resources(result: ApplyResult, resource_type: str | None = None) -> list[dict]:
    """Every generated resource, optionally of one type."""
    return [a.resource for a in walk(result.actions)
            if a.resource is not None and (resource_type is None or a.resource.get("resourceType") == resource_type)]


def medication_codes(resource: dict) -> set[tuple[str, str]]:
    concept = resource.get("medicationCodeableConcept") or {}
    return {(c.get("system"), c.get("code")) for c in concept.get("coding") or []}


def text_of(action: AppliedAction) -> str:
    """Title and description of an action, for looking for words in them."""
    return f"{action.fields.get('title', '')} {action.fields.get('description', '')}"


def date_forms(value: date) -> list[str]:
    """Ways a date may be written in a card: ISO, '15 November 2026', 'November 15, 2026', 'Nov 15, 2026'."""
    month = calendar.month_name[value.month]
    short = calendar.month_abbr[value.month]
    return [value.isoformat(), f"{value.day} {month} {value.year}", f"{month} {value.day}, {value.year}",
            f"{short} {value.day}, {value.year}", f"{value.day} {short} {value.year}"]


def mentions_date(text: str, *dates: date) -> bool:
    """True when the text names any of the dates in a usual form."""
    return any(form in text for d in dates for form in date_forms(d))


def quantity(value: float, code: str) -> dict:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


# ---------------------------------------------------------------------------------- editable content


class ContentCopy:
    """A writable copy of the protocol content (publication.json beside it), for tests that change an artifact."""

    def __init__(self, tmp_path: Path):
        self.folder = tmp_path / "content"
        shutil.copytree(CONTENT_DIR, self.folder, ignore=shutil.ignore_patterns(PUBLICATION_NAME))
        shutil.copy(PUBLICATION_FILE, tmp_path / "publication.json")

    def path(self, resource_type: str, resource_id: str) -> Path:
        return self.folder / f"{resource_type}-{resource_id}.json"

    def read(self, resource_type: str, resource_id: str) -> dict:
        return json.loads(self.path(resource_type, resource_id).read_text())

    def write(self, resource: dict) -> None:
        self.path(resource["resourceType"], resource["id"]).write_text(json.dumps(resource, indent=1))

    def engine(self) -> Engine:
        return Engine(load_content(self.folder))


def action_in(plan: dict, action_id: str) -> dict:
    """A PlanDefinition action (at any depth) by id, for editing a copy."""
    stack = list(plan.get("action") or [])
    while stack:
        action = stack.pop()
        if action.get("id") == action_id:
            return action
        stack.extend(action.get("action") or [])
    raise KeyError(action_id)


def fhirpath(expression: str) -> dict:
    return {"language": "text/fhirpath", "expression": expression}


def deep(value: Any) -> Any:
    return copy.deepcopy(value)
