"""From a CDS Hooks request body (or a plain Bundle) to the $apply calls it asks for.

Hook semantics live here, not in the content: ``patientId`` is the subject, ``userId`` the practitioner,
prefetch values and the drafted orders are the data; on order-select each selected draft order is reviewed,
on order-sign each draft order, with all drafted orders available as ``draftOrders``. Which PlanDefinitions
run is read from their named-event triggers. A draft order for another patient than ``patientId`` is a
request error (``DraftForAnotherPatient``), not data to leave out: the client is about to sign it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.engine.apply import ApplyError, ApplyResult, CompiledPlan, Deadline, Engine
from protocol.engine.parameters import ApplyParameters, ParameterError, PrefetchData
from protocol.engine.record import Record, SubjectScope, entries_of, patient_full_urls

ORDER_HOOKS = ("order-select", "order-sign")


@dataclass
class ApplyCall:
    """One PlanDefinition/$apply to run for a request, with the bounds of its work (see Engine.apply).

    The calls of one request share their ``data`` list: ``run_calls`` indexes it once for all of them.
    """

    compiled: CompiledPlan
    subject: str
    data: list[Any]
    encounter: str | None = None
    practitioner: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    max_resources: int | None = None
    deadline: Deadline | None = None

    @property
    def plan(self) -> str:
        """The id of the PlanDefinition applied."""
        return self.compiled.resource["id"]

    @property
    def draft_order(self) -> Mapping[str, Any] | None:
        return self.parameters.get("draftOrder")


@dataclass(frozen=True)
class HookContext:
    """What a CDS Hooks request asks, read once: the hook, who and what it is about, and its draft orders.

    ``drafts`` are the resources of ``context.draftOrders`` (each a dict of the request body, not a copy) and
    ``reviewed`` those the hook reviews; ``draft_bundle`` is the Bundle itself (its fullUrls tell urn:uuid subjects).
    """

    hook: str
    subject: str
    encounter: str | None
    practitioner: str | None
    prefetch: Mapping[str, Any]
    draft_bundle: Any
    drafts: list[dict[str, Any]]
    reviewed: list[dict[str, Any]]


class DraftForAnotherPatient(ApplyError):
    """A draft order of the request names another patient than the request's (it is named, the patient is not)."""

    def __init__(self, draft: str):
        super().__init__(f"draft order {draft} is for another patient than context.patientId")
        self.draft = draft


def bundle_resources(bundle: Any) -> list[dict[str, Any]]:
    """The resources of a Bundle (entries without a resource are skipped)."""
    if not isinstance(bundle, Mapping) or not isinstance(bundle.get("entry", []), list):
        return []
    return [e["resource"] for e in bundle.get("entry") or [] if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)]


def _reference(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def check_draft_subjects(subject: str, drafts: list[Mapping[str, Any]], data: list[Any]) -> None:
    """Raise DraftForAnotherPatient for the first draft whose ``subject`` or ``patient`` names another patient.

    A ``urn:uuid`` reference is told through the fullUrls of the Patient entries in the data and the drafts'
    Bundle, read only when a draft uses one.
    """
    full_urls = patient_full_urls(entries_of(data)) if any(_uses_urn(draft) for draft in drafts) else {}
    scope = SubjectScope(subject, full_urls)
    for draft in drafts:
        if scope.other_patient_reference(draft) is not None:
            name = _reference(draft) if isinstance(draft.get("id"), str) else f"{draft.get('resourceType')} (without id)"
            raise DraftForAnotherPatient(name)


def _uses_urn(resource: Mapping[str, Any]) -> bool:
    return any(isinstance(holder, Mapping) and str(holder.get("reference", "")).startswith("urn:")
               for holder in (resource.get("subject"), resource.get("patient")))


def reviewed_orders(hook: str, context: Mapping[str, Any], drafts: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The draft orders a hook asks about: the selections on order-select, every draft on order-sign."""
    if drafts is None:
        drafts = bundle_resources(context.get("draftOrders"))
    if hook == "order-select":
        selections = {s for s in context.get("selections") or [] if isinstance(s, str)}
        return [d for d in drafts if _reference(d) in selections or (isinstance(d.get("id"), str) and d["id"] in selections)]
    return drafts


def hook_context(body: Mapping[str, Any]) -> HookContext:
    """Read a CDS Hooks request once: its drafts are taken out of their Bundle here and nowhere else, and checked
    against the patient (DraftForAnotherPatient; urn:uuid subjects told by the prefetch and the drafts' Bundle)."""
    hook = body.get("hook")
    context = body.get("context") or {}
    subject = context.get("patientId")
    if not isinstance(hook, str) or not isinstance(subject, str):
        raise ApplyError("a CDS Hooks request needs hook and context.patientId")
    prefetch = body.get("prefetch") if isinstance(body.get("prefetch"), Mapping) else {}
    bundle = context.get("draftOrders")
    drafts = bundle_resources(bundle)
    check_draft_subjects(subject, drafts, [prefetch, bundle])
    reviewed = reviewed_orders(hook, context, drafts) if hook in ORDER_HOOKS else []
    return HookContext(hook, subject, context.get("encounterId"), context.get("userId"), prefetch, bundle, drafts, reviewed)


def from_hook(body: Mapping[str, Any] | HookContext) -> ApplyParameters:
    """The $apply inputs a CDS Hooks request stands for, mapped as the reference implementation maps them:
    ``patientId`` is the subject, ``userId`` the practitioner, ``encounterId`` the encounter, each prefetch key a
    ``prefetchData`` item (a single resource wrapped in a collection Bundle), the drafts ``draftOrders`` in
    ``parameters``. A value the operation would refuse is an ApplyError naming it."""
    request = body if isinstance(body, HookContext) else hook_context(body)
    prefetch = []
    for key, value in request.prefetch.items():
        if isinstance(value, Mapping) and value.get("resourceType") == "Bundle":
            prefetch.append(PrefetchData(key=key, data=dict(value)))
        elif isinstance(value, Mapping) and isinstance(value.get("resourceType"), str):
            prefetch.append(PrefetchData(key=key, data={"resourceType": "Bundle", "type": "collection", "entry": [{"resource": value}]}))
    drafts = [{"name": "draftOrders", "resource": draft} for draft in request.drafts]
    try:
        return ApplyParameters(
            subject=f"Patient/{request.subject}" if "/" not in request.subject else request.subject,
            encounter=(request.encounter if "/" in request.encounter else f"Encounter/{request.encounter}") if request.encounter else None,
            practitioner=request.practitioner or None, prefetch_data=tuple(prefetch),
            parameters={"resourceType": "Parameters", "parameter": drafts} if drafts else None)
    except ParameterError as exc:
        field = {"subject": "context.patientId", "encounter": "context.encounterId", "practitioner": "context.userId"}.get(exc.parameter)
        raise ApplyError(f"{field} cannot be taken: {exc}" if field else str(exc)) from None


def calls_for_hook(engine: Engine, body: Mapping[str, Any] | HookContext, plan: str | CompiledPlan | None = None,
                   data: list[Any] | None = None, *, max_resources: int | None = None,
                   deadline: Deadline | None = None) -> list[ApplyCall]:
    """The $apply calls for a CDS Hooks request (its body, or the HookContext read from it): one per PlanDefinition
    (or only ``plan``), and per reviewed order on the order hooks. ``data`` replaces the prefetch values when the
    caller completed them; the drafts are then checked again against it, since it may hold the Patient entries a
    urn:uuid subject names. ``max_resources`` bounds the record, ``deadline`` all the calls together."""
    request = body if isinstance(body, HookContext) else hook_context(body)
    if data is None:
        data = [value for value in request.prefetch.values() if value is not None]
    else:
        check_draft_subjects(request.subject, request.drafts, [data, request.draft_bundle])
    shared = list(data) + request.drafts
    inputs = from_hook(request)
    common = {"subject": inputs.subject, "data": shared, "encounter": inputs.encounter, "practitioner": inputs.practitioner,
              "max_resources": max_resources, "deadline": deadline}
    if isinstance(plan, CompiledPlan):
        plans = [plan]
    else:
        plans = [engine.plan(plan)] if plan else engine.plans_for_hook(request.hook)
    calls = []
    for compiled in plans:
        if request.hook in ORDER_HOOKS:
            for order in request.reviewed:
                calls.append(ApplyCall(compiled, parameters={"draftOrder": order, "draftOrders": request.drafts}, **common))
        else:
            calls.append(ApplyCall(compiled, **common))
    return calls


def calls_for_bundle(engine: Engine, bundle: Mapping[str, Any], plan: str | None) -> list[ApplyCall]:
    """One call of a PlanDefinition (default: the one triggered by patient-view) over a Bundle of the patient's data."""
    resources = bundle_resources(bundle)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1:
        raise ApplyError(f"the Bundle must hold exactly one Patient (found {len(patients)})")
    if plan is None:
        triggered = engine.plans_for_hook("patient-view")
        if not triggered:
            raise ApplyError("no PlanDefinition is triggered by patient-view: name one with --plan")
        compiled = triggered[0]
    else:
        compiled = engine.plan(plan)
    return [ApplyCall(compiled, f"Patient/{patients[0]['id']}", [bundle])]


def is_hook_request(data: Any) -> bool:
    """True for a CDS Hooks request body (it has hook and context)."""
    return isinstance(data, Mapping) and "hook" in data and "context" in data


def run_calls(engine: Engine, calls: Iterable[ApplyCall], now: Any) -> list[ApplyResult]:
    """Apply each call; the results in call order (TooMuchData or ApplyTimeout from any call stops them all).

    Calls that share their data list and subject (those of one request) share one Record, indexed once.
    """
    records: dict[tuple[int, str], Record] = {}
    results = []
    for c in calls:
        key = (id(c.data), c.subject)
        record = records.get(key)
        if record is None:
            record = records[key] = engine.record(c.data, now, c.subject, max_resources=c.max_resources)
        results.append(engine.apply(c.compiled, c.data, now, c.subject, encounter=c.encounter, practitioner=c.practitioner,
                                    parameters=c.parameters, max_resources=c.max_resources, deadline=c.deadline, record=record))
    return results
