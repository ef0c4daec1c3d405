"""What $apply returns: the R4 CarePlan with its contained RequestGroup, the R5 Bundle, ActivityDefinition/$apply,
and the processing rules of clinical reasoning (applicability, dynamicValue order, the clock, ``action.`` paths).

Validation runs on a handful of representative results (fhir.resources models and the independent Node checker)
rather than in loops, to keep the suite fast.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta

import pytest
from fhir.resources import get_fhir_model_class as r5_model
from fhir.resources.R4B import get_fhir_model_class as r4b_model
from fhir.resources.R4B.careplan import CarePlan

from protocol.engine.apply import canonical_of
from protocol.engine.output import CQF_MESSAGES, bundle_r5, careplan_r4
from tests.cds_support import (
    PATHWAY,
    REVIEW,
    ContentCopy,
    action_in,
    cards,
    engine,
    fhirpath,
    find,
    get,
    medication_codes,
    phase,
    review,
    view,
)
from tests.fhir_check import fhir_check
from tests.patients import (
    CLOCK,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_10,
    HEART_FAILURE,
    LUMBAR_ORTHOSIS,
    RXNORM,
    SERTRALINE,
    Patient,
    day,
)

__all__ = ["engine"]

STRENGTH = "http://hl7.org/fhir/StructureDefinition/cqf-strengthOfRecommendation"
QUALITY = "http://hl7.org/fhir/StructureDefinition/cqf-qualityOfEvidence"


def patient_in_phase(days_ago: float, **medications) -> Patient:
    patient = Patient(45)
    patient.spasm(days_ago=days_ago)
    if medications.get("cyclobenzaprine"):
        patient.medication(CYCLOBENZAPRINE_5, started_days_ago=medications["cyclobenzaprine"])
    if medications.get("sertraline"):
        patient.medication(SERTRALINE)
    return patient


def group_actions(actions: list[dict]):
    for action in actions:
        yield action
        yield from group_actions(action.get("action") or [])


def request_group(careplan: dict) -> dict:
    return next(r for r in careplan["contained"] if r["id"] == "request-group")


def pd_action(engine, plan: str, action_id: str) -> dict:
    return action_in(engine.plan(plan).resource, action_id)


@pytest.fixture(scope="module")
def samples(engine) -> dict[str, dict]:
    """Representative R4 CarePlans: each phase, a withheld proposal, an S11 stop, and two order reviews."""
    out = {}
    out["phase-1"] = careplan_r4(view(engine, patient_in_phase(20 / 24, sertraline=True)))
    out["phase-2"] = careplan_r4(view(engine, patient_in_phase(4)))
    out["phase-3-stop"] = careplan_r4(view(engine, patient_in_phase(25, cyclobenzaprine=24)))
    out["phase-4"] = careplan_r4(view(engine, patient_in_phase(40)))
    older = Patient(70)
    older.spasm(20)
    older.condition(HEART_FAILURE, onset_value=day(300))
    out["withheld"] = careplan_r4(view(engine, older))
    patient = patient_in_phase(1)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, per_day=4, days=30, supply_days=30, quantity=120, draft_id="rx-1")
    out["review-dose-course"] = careplan_r4(review(engine, patient, draft))
    brace = patient.draft_service(LUMBAR_ORTHOSIS, resource_type="DeviceRequest", draft_id="brace-1")
    out["review-brace"] = careplan_r4(review(engine, patient, brace))
    return out


# ---------------------------------------------------------------------------------- R4 CarePlan


def test_careplan_header(engine):
    patient = patient_in_phase(20 / 24)
    careplan = careplan_r4(view(engine, patient))
    plan = engine.plan(PATHWAY).resource
    assert careplan["resourceType"] == "CarePlan"
    assert careplan["instantiatesCanonical"] == [f"{plan['url']}|{plan['version']}"]
    assert careplan["subject"] == {"reference": f"Patient/{patient.id}"}
    assert careplan["status"] == "draft" and careplan["intent"] == "proposal"
    assert careplan["activity"] == [{"reference": {"reference": "#request-group"}}]
    group = request_group(careplan)
    assert group["resourceType"] == "RequestGroup"
    assert group["instantiatesCanonical"] == careplan["instantiatesCanonical"]
    assert group["subject"] == careplan["subject"]
    assert [a["id"] for a in group["action"]] == ["phase-plan", "cyclobenzaprine-proposal"]


def test_every_generated_request_is_contained_once_and_referenced(samples):
    for name, careplan in samples.items():
        ids = [r["id"] for r in careplan["contained"]]
        assert len(ids) == len(set(ids)), name
        contained = {f"#{r['id']}": r for r in careplan["contained"]}
        referenced = set()
        for action in group_actions(request_group(careplan).get("action") or []):
            ref = (action.get("resource") or {}).get("reference")
            if ref is None:
                continue
            kinds = {c["code"] for c in (action.get("type") or {}).get("coding") or []}
            if "remove" in kinds:
                assert not ref.startswith("#"), f"{name}: a removal points at the draft order, not a copy"
                continue
            assert ref in contained, f"{name}: {ref} does not resolve"
            referenced.add(ref)
        generated = {ref for ref, r in contained.items() if r["resourceType"] not in ("RequestGroup", "OperationOutcome")}
        assert generated == referenced, name


def test_the_proposal_is_ordered_once_and_listed_in_the_plan(samples):
    careplan = samples["phase-1"]
    group = request_group(careplan)
    refs = {a["id"]: a["resource"]["reference"] for a in group_actions(group["action"]) if "resource" in a}
    by_ref = {f"#{r['id']}": r for r in careplan["contained"]}
    orders = [r for r in careplan["contained"] if r["resourceType"] == "MedicationRequest"]
    assert [o["id"] for o in orders] == [refs["order-cyclobenzaprine"].lstrip("#")], "one cyclobenzaprine order, from the proposal card"
    assert (RXNORM, "828320") in medication_codes(by_ref[refs["order-cyclobenzaprine"]])
    listed = by_ref[refs["phase-1-cyclobenzaprine"]]
    assert listed["resourceType"] == "CommunicationRequest" and "cyclobenzaprine" in listed["payload"][0]["contentString"].lower()


def test_removals_point_at_the_reviewed_draft(samples):
    group = request_group(samples["review-brace"])
    removals = [a["resource"]["reference"] for a in group_actions(group["action"])
                if any(c["code"] == "remove" for c in (a.get("type") or {}).get("coding") or [])]
    assert removals and set(removals) == {"DeviceRequest/brace-1"}


def test_both_updates_of_one_draft_are_applied(engine):
    """S8 and S9 on the same draft: each card has its own changed copy of the draft, with the draft's id."""
    patient = patient_in_phase(1)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, per_day=4, days=30, draft_id="rx-1")
    result = review(engine, patient, draft)
    assert cards(result) == {"draft-course-too-long", "draft-dose-too-high"}
    course, dose = get(result, "draft-course-limit").resource, get(result, "draft-dose-limit").resource
    assert course["id"] == dose["id"] == "rx-1"
    assert course["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]["value"] == 21
    assert dose["dosageInstruction"][0]["timing"]["repeat"]["frequency"] == 3


def test_both_updates_of_one_draft_reach_the_careplan(samples):
    careplan = samples["review-dose-course"]
    actions = {a["id"]: a for a in group_actions(request_group(careplan)["action"])}
    by_ref = {f"#{r['id']}": r for r in careplan["contained"]}
    course = by_ref[actions["draft-course-limit"]["resource"]["reference"]]
    dose = by_ref[actions["draft-dose-limit"]["resource"]["reference"]]
    assert course["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]["value"] == 21
    assert dose["dosageInstruction"][0]["timing"]["repeat"]["frequency"] == 3


def test_behaviours_related_actions_and_timing_are_copied_from_the_plan(engine, samples):
    phase_1 = {a["id"]: a for a in group_actions(request_group(samples["phase-1"])["action"])}
    phase_2 = {a["id"]: a for a in group_actions(request_group(samples["phase-2"])["action"])}
    source = pd_action(engine, PATHWAY, "phase-plan")
    for key in ("groupingBehavior", "selectionBehavior"):
        assert phase_1["phase-plan"][key] == source[key]
    assert phase_2["phase-2"]["relatedAction"] == pd_action(engine, PATHWAY, "phase-2")["relatedAction"]
    for action_id, group in (("phase-1", phase_1), ("phase-2", phase_2)):
        timing = {k: v for k, v in pd_action(engine, PATHWAY, action_id).items() if k.startswith("timing")}
        assert timing, f"{action_id} has timing in the PlanDefinition"
        assert {k: v for k, v in group[action_id].items() if k.startswith("timing")} == timing


def test_evidence_extensions_are_copied(engine, samples):
    actions = {a["id"]: a for a in group_actions(request_group(samples["phase-1"])["action"])}
    for action_id in ("phase-1-heat", "phase-1-cyclobenzaprine"):
        source = pd_action(engine, PATHWAY, action_id)
        wanted = [e for e in source["extension"] if e["url"] in (STRENGTH, QUALITY)]
        assert len(wanted) == 2
        copied = [e for e in actions[action_id].get("extension") or [] if e["url"] in (STRENGTH, QUALITY)]
        assert copied == wanted


def test_codes_carry_the_rule_ids(samples):
    actions = {a["id"]: a for a in group_actions(request_group(samples["withheld"])["action"])}
    codes = {action_id: {c["code"] for cc in actions[action_id]["code"] for c in cc["coding"]}
             for action_id in ("withheld-cardiac", "withheld-older-adult")}
    assert codes == {"withheld-cardiac": {"S2"}, "withheld-older-adult": {"S6"}}


def test_careplans_validate_with_the_r4b_models(samples):
    for careplan in samples.values():
        CarePlan.model_validate(careplan)
        for resource in careplan["contained"]:
            r4b_model(resource["resourceType"]).model_validate(resource)


def checker_errors(resources: list[dict], tmp_path) -> tuple[int, list]:
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}
    code, report = fhir_check(data=bundle, tmp_path=tmp_path)
    errors = [(item["target"], issue["path"], issue["message"]) for f in report.get("files", []) for item in f["items"]
              for issue in item["issues"] if issue.get("severity") == "error"]
    return code, errors


def test_careplans_with_suggestions_only_pass_the_independent_r4_checker(samples, tmp_path):
    """Plans whose every action has a resource or sub-actions: phase 2, a stop in phase 3, a brace review."""
    code, errors = checker_errors([samples[n] for n in ("phase-2", "phase-3-stop", "review-brace")], tmp_path)
    assert errors == [] and code == 0


def test_every_sample_careplan_passes_the_independent_r4_checker(samples, tmp_path):
    code, errors = checker_errors(list(samples.values()), tmp_path)
    assert errors == [] and code == 0


def test_every_request_group_action_has_a_resource_or_sub_actions(samples):
    bad = [(name, a["id"]) for name, careplan in samples.items() for a in group_actions(request_group(careplan).get("action") or [])
           if ("resource" in a) == bool(a.get("action"))]
    assert bad == []


def test_contained_ids_are_valid_r4_ids(samples):
    bad = [(name, r["id"]) for name, careplan in samples.items() for r in careplan["contained"]
           if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", r["id"])]
    assert bad == []


# ---------------------------------------------------------------------------------- R5 Bundle


def test_r5_bundle_starts_with_the_request_orchestration_and_resolves(engine):
    patient = patient_in_phase(20 / 24, sertraline=True)
    bundle = bundle_r5(view(engine, patient))
    first = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "RequestOrchestration"
    assert first["instantiatesCanonical"] == [canonical_of(engine.plan(PATHWAY).resource)]
    assert first["subject"] == {"reference": f"Patient/{patient.id}"}
    urls = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    assert len(urls) == len(bundle["entry"])
    refs = [a["resource"]["reference"] for a in group_actions(first["action"]) if "resource" in a]
    assert len(refs) >= 3 and all(ref in urls for ref in refs)
    orders = [urls[ref] for ref in refs if urls[ref]["resourceType"] == "MedicationRequest"]
    assert orders and all(o["medication"]["concept"]["coding"][0]["code"] == "828320" for o in orders)
    linked = {a.get("linkId") for a in group_actions(first["action"])}
    assert {"phase-plan", "phase-1", "phase-1-heat", "serotonergic-note"} <= linked


@pytest.fixture(scope="module")
def r5_samples(engine) -> list[dict]:
    patient = patient_in_phase(20 / 24, sertraline=True)
    later = patient_in_phase(25, cyclobenzaprine=24)
    draft = later.draft_medication(CYCLOBENZAPRINE_10, per_day=4, days=30, draft_id="rx-9")
    return [bundle_r5(view(engine, patient)), bundle_r5(view(engine, later)), bundle_r5(review(engine, later, draft))]


def test_r5_care_plans_and_service_requests_validate_with_the_r5_models(r5_samples):
    checked = 0
    for bundle in r5_samples:
        for entry in bundle["entry"]:
            if entry["resource"]["resourceType"] in ("CarePlan", "ServiceRequest", "OperationOutcome"):
                r5_model(entry["resource"]["resourceType"]).model_validate(entry["resource"])
                checked += 1
    assert checked >= 5


def test_r5_request_orchestration_validates_with_the_r5_models(r5_samples):
    for bundle in r5_samples:
        r5_model("RequestOrchestration").model_validate(bundle["entry"][0]["resource"])


def test_r5_medication_requests_validate_with_the_r5_models(r5_samples):
    orders = [e["resource"] for b in r5_samples for e in b["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert len(orders) >= 2
    for order in orders:
        r5_model("MedicationRequest").model_validate(order)


# ---------------------------------------------------------------------------------- ActivityDefinition/$apply


def test_activity_apply_service_request(engine):
    patient = patient_in_phase(1)
    resource, issues = engine.apply_activity("heat-therapy-immediate", patient.resources, CLOCK, patient.id)
    definition = engine.content.get("ActivityDefinition", "heat-therapy-immediate")
    assert issues == []
    assert resource["resourceType"] == "ServiceRequest"
    assert resource["instantiatesCanonical"] == [canonical_of(definition)]
    assert resource["code"] == definition["code"]
    assert resource["occurrenceTiming"] == definition["timingTiming"]
    assert resource["subject"] == {"reference": f"Patient/{patient.id}"}
    assert resource["status"] == "draft" and resource["intent"] == "proposal"
    assert "burn" in resource["patientInstruction"]
    r4b_model("ServiceRequest").model_validate(resource)


def test_activity_apply_medication_request(engine):
    patient = patient_in_phase(1)
    resource, issues = engine.apply_activity(
        "http://example.org/fhir/back-spasm-cds/ActivityDefinition/cyclobenzaprine-5mg-tid", patient.resources, CLOCK, patient.id)
    assert issues == []
    assert resource["resourceType"] == "MedicationRequest"
    assert medication_codes(resource) == {(RXNORM, "828320")}
    assert resource["dispenseRequest"]["expectedSupplyDuration"]["value"] == 21
    assert resource["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]["value"] == 21
    assert resource["authoredOn"].startswith(CLOCK.date().isoformat())
    r4b_model("MedicationRequest").model_validate(resource)


# ---------------------------------------------------------------------------------- a changed copy of the content


REMINDER = {
    "resourceType": "ActivityDefinition",
    "id": "reminder-stay-active",
    "url": "http://example.org/fhir/back-spasm-cds/ActivityDefinition/reminder-stay-active",
    "version": "1.0.0",
    "name": "ReminderStayActive",
    "title": "Reminder to stay active",
    "status": "active",
    "library": ["http://example.org/fhir/back-spasm-cds/Library/back-spasm-logic"],
    "kind": "CommunicationRequest",
    "code": {"text": "Keep moving within comfort; bed rest slows recovery."},
    "priority": "routine",
    "dynamicValue": [
        {"path": "note[0].text", "expression": fhirpath("'first'")},
        {"path": "note[0].text", "expression": fhirpath("%resource.note.text.first() + ' then second'")},
    ],
}


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
    """The content with test-only changes, compiled once:

    - a CommunicationRequest ActivityDefinition, used by a new top-level action;
    - a top-level action and a phase-1 child whose condition fails at evaluation time;
    - a top-level action whose condition gives a string, not a boolean;
    - a PlanDefinition dynamicValue on the heat order that extends the ActivityDefinition's patient instruction.
    """
    copy_ = ContentCopy(tmp_path_factory.mktemp("changed"))
    copy_.write(REMINDER)
    plan = copy_.read("PlanDefinition", PATHWAY)
    trigger = [{"type": "named-event", "name": "patient-view"}]
    plan["action"].append({"id": "test-reminder", "title": "Stay active", "trigger": trigger,
                           "condition": [{"kind": "applicability", "expression": fhirpath("%inScope")}],
                           "definitionCanonical": REMINDER["url"]})
    failing = fhirpath("(%activeSpasm | %patient).count() > 0 and (1 | 2) > 0")
    plan["action"].append({"id": "test-broken", "title": "Broken", "trigger": trigger,
                           "condition": [{"kind": "applicability", "expression": failing}]})
    plan["action"].append({"id": "test-not-boolean", "title": "Not boolean", "trigger": trigger,
                           "condition": [{"kind": "applicability", "expression": fhirpath("'yes'")}]})
    action_in(plan, "phase-1")["action"].append(
        {"id": "phase-1-broken", "title": "Broken child",
         "condition": [{"kind": "applicability", "expression": fhirpath("%onset.toString() + 1 > 0")}]})
    action_in(plan, "phase-1-heat").setdefault("dynamicValue", []).append(
        {"path": "patientInstruction", "expression": fhirpath("%resource.patientInstruction + ' (from the plan)'")})
    copy_.write(plan)
    return copy_.engine()


def test_activity_apply_communication_request(changed):
    patient = patient_in_phase(1)
    resource, issues = changed.apply_activity("reminder-stay-active", patient.resources, CLOCK, patient.id)
    assert issues == []
    assert resource["resourceType"] == "CommunicationRequest"
    assert resource["status"] == "draft" and resource["subject"] == {"reference": f"Patient/{patient.id}"}
    assert resource["priority"] == "routine"
    assert any("bed rest" in p.get("contentString", "") for p in resource["payload"])
    assert resource["authoredOn"].startswith(CLOCK.date().isoformat())


def test_activity_apply_communication_request_is_valid_r4(changed):
    patient = patient_in_phase(1)
    resource, _ = changed.apply_activity("reminder-stay-active", patient.resources, CLOCK, patient.id)
    r4b_model("CommunicationRequest").model_validate(resource)


def test_dynamic_values_of_the_activity_definition_apply_in_order(changed):
    patient = patient_in_phase(1)
    resource, _ = changed.apply_activity("reminder-stay-active", patient.resources, CLOCK, patient.id)
    assert [n["text"] for n in resource["note"]] == ["first then second"]


def test_plan_dynamic_values_come_after_the_activity_definitions(changed):
    result = view(changed, patient_in_phase(20 / 24))
    instruction = get(result, "phase-1-heat").resource["patientInstruction"]
    definition = changed.content.get("ActivityDefinition", "heat-therapy-immediate")
    own = definition["dynamicValue"][0]["expression"]["expression"].strip("'")
    assert instruction == own + " (from the plan)"


def test_a_condition_that_fails_makes_only_its_action_not_applicable(changed):
    patient = patient_in_phase(20 / 24)
    result = view(changed, patient)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal", "test-reminder"}
    assert find(result, "phase-1-broken") is None
    assert find(result, "phase-1-heat") is not None and find(result, "phase-1-cyclobenzaprine") is not None
    errors = [i for i in result.issues if i.severity == "error"]
    assert len(errors) == 2
    assert any("action[" in (i.expression or "") and "condition" in (i.expression or "") for i in errors)
    careplan = careplan_r4(result)
    outcome = next(r for r in careplan["contained"] if r["resourceType"] == "OperationOutcome")
    assert {"url": CQF_MESSAGES, "valueReference": {"reference": f"#{outcome['id']}"}} in careplan["extension"]
    assert len([i for i in outcome["issue"] if i["severity"] == "error"]) == 2
    r4b_model("OperationOutcome").model_validate(outcome)


def test_a_non_boolean_condition_is_not_applicable(changed):
    result = view(changed, patient_in_phase(20 / 24))
    assert find(result, "test-not-boolean") is None
    assert {"phase-plan", "cyclobenzaprine-proposal", "test-reminder"} <= cards(result)


def test_the_changed_content_still_leaves_out_of_scope_patients_alone(changed):
    """The test actions whose conditions fail or are not boolean never fire, even without a spasm."""
    patient = Patient(45)
    result = view(changed, patient)
    assert result.actions == []


# ---------------------------------------------------------------------------------- clock and action paths


def test_now_and_today_follow_the_injected_clock(engine):
    patient = Patient(45)
    patient.condition(("http://hl7.org/fhir/sid/icd-10-cm", "M62.830", "Muscle spasm of back"), onset_value="2026-11-24T14:00:00Z")
    early, later = view(engine, patient, now=CLOCK), view(engine, patient, now=CLOCK + timedelta(hours=40))
    assert (phase(early), phase(later)) == (1, 2)
    assert get(early, "phase-1-heat").resource["authoredOn"] == "2026-11-25T10:00:00Z"
    assert get(later, "phase-2-heat").resource["authoredOn"] == "2026-11-27T02:00:00Z"
    assert "day 1, 20 hours since onset" in get(early, "phase-plan").fields["title"]
    assert "day 3" in get(later, "phase-plan").fields["title"] and "hours" not in get(later, "phase-plan").fields["title"]


def test_action_paths_set_the_request_group_action(engine):
    static = pd_action(engine, PATHWAY, "phase-plan")
    assert "dynamicValue" in static and static["title"] == "Back muscle spasm plan"
    for days_ago, word in ((20 / 24, "immediate"), (10, "rehabilitation")):
        title = get(view(engine, patient_in_phase(days_ago)), "phase-plan").fields["title"]
        assert title != static["title"] and word in title
    warning = get(view(engine, patient_in_phase(20 / 24, sertraline=True)), "cyclobenzaprine-proposal")
    assert "Sertraline" in warning.fields["title"] and warning.fields["priority"] == "urgent"


def test_order_review_result_is_a_careplan_of_the_review_plan(engine):
    patient = patient_in_phase(1)
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, days=30)
    careplan = careplan_r4(review(engine, patient, draft))
    assert careplan["instantiatesCanonical"] == [canonical_of(engine.plan(REVIEW).resource)]
    assert [a["id"] for a in request_group(careplan)["action"]] == ["draft-course-too-long"]


def test_applying_does_not_change_the_inputs(engine):
    patient = patient_in_phase(25, cyclobenzaprine=24)
    before = copy.deepcopy(patient.resources)
    careplan_r4(view(engine, patient))
    draft = patient.draft_medication(CYCLOBENZAPRINE_10, per_day=4, days=30)
    kept = copy.deepcopy(draft)
    careplan_r4(review(engine, patient, draft))
    assert patient.resources == before and draft == kept
