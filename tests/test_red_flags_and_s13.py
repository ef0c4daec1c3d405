"""Red flags first (PROTOCOL.md §1), S13 anticholinergic caution (§4), the care plan in place (§6) and worked
examples 13, 14 and 15 (§7): through the engine, through ``back-spasm-cds apply`` and through the service.

- An active condition of ``back-pain-red-flags`` suspends the protocol: patient-view gives one critical card
  (``red-flag``) naming it, with the guidance linked, and nothing else; a cyclobenzaprine, lumbar-support, TENS or
  traction draft gets a warning (``draft-red-flag``, override reasons, no removal), the "not recommended" cards
  are held back, the cyclobenzaprine safety cards are not. Resolved or refuted red flags change nothing.
- Every plan card lists the red flags to ask about.
- S13: a condition of ``anticholinergic-cautions`` on record, active or resolved (not refuted or entered in error),
  turns the one proposal card into a warning that names it (beside S7 and S12), and a drafted cyclobenzaprine
  order gets ``draft-anticholinergic`` (warning, override reasons, no suggestion).
- A plan in place: an active CarePlan of this pathway created at or after the start of the current phase gives
  ``phase-plan-in-place`` (no suggestion) instead of ``phase-plan``.

Every clinical code below is read from the protocol's ValueSets (see ``test_codes_come_from_the_protocol``).
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

import pytest

import protocol.engine.apply
from protocol.engine.content import CONTENT_DIR
from service.cli import main
from tests.cds_support import (
    cards,
    engine,
    find,
    get,
    phase,
    resources,
    review,
    rule_codes,
    text_of,
    view,
    walk,
)
from tests.patients import (
    CIRRHOSIS,
    CLOCK,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_10,
    HEAT,
    ICD,
    LUMBAR_ORTHOSIS,
    LUMBOSACRAL_BELT,
    PHENELZINE,
    RXNORM,
    SCT,
    SERTRALINE,
    TENS_DEVICE,
    TRACTION,
    TRAMADOL,
    Patient,
    day,
    when,
)
from tests.service_helpers import (
    by_topic,
    call,
    hook_body,
    make_app,
    r4b_problems,
    response_problems,
    topic,
    topics,
)

__all__ = ["engine"]

AT = "2026-11-25T10:00:00Z"
PATHWAY_URL = "http://example.org/fhir/back-spasm-cds/PlanDefinition/back-spasm-treatment-pathway"
OVERRIDE_EXT = "http://example.org/fhir/back-spasm-cds/StructureDefinition/cds-override-reasons"

# -- codes, each checked against the protocol's ValueSet expansions -----------------------------------------------

#: The five red-flag categories of §1, each in ICD-10-CM and SNOMED CT (ValueSet back-pain-red-flags).
RED_FLAGS = {
    "cauda-equina-icd": (ICD, "G83.4", "Cauda equina syndrome"),
    "cauda-equina-sct": (SCT, "192970008", "Cauda equina syndrome"),
    "cord-compression-icd": (ICD, "G95.20", "Unspecified cord compression"),
    "cord-compression-sct": (SCT, "71286001", "Spinal cord compression"),
    "infection-icd": (ICD, "M46.26", "Osteomyelitis of vertebra, lumbar region"),
    "infection-sct": (SCT, "302935008", "Infective discitis"),
    "fracture-icd": (ICD, "M48.56XA", "Collapsed vertebra, not elsewhere classified, lumbar region, initial encounter for fracture"),
    "fracture-sct": (SCT, "42942008", "Compression fracture of vertebral column"),
    "metastasis-icd": (ICD, "C79.51", "Secondary malignant neoplasm of bone"),
    "metastasis-sct": (SCT, "94602001", "Metastatic malignant neoplasm to vertebral column"),
}
CAUDA_EQUINA = RED_FLAGS["cauda-equina-icd"]
CORD_COMPRESSION = RED_FLAGS["cord-compression-sct"]

#: The three S13 condition kinds, each in ICD-10-CM and SNOMED CT (ValueSet anticholinergic-cautions).
ANTICHOLINERGIC = {
    "urinary-retention-icd": (ICD, "R33.9", "Retention of urine, unspecified"),
    "urinary-retention-sct": (SCT, "267064002", "Retention of urine"),
    "angle-closure-icd": (ICD, "H40.211", "Acute angle-closure glaucoma, right eye"),
    "angle-closure-sct": (SCT, "392291006", "Angle-closure glaucoma"),
    "raised-iop-icd": (ICD, "H40.053", "Ocular hypertension, bilateral"),
    "raised-iop-sct": (SCT, "4210003", "Ocular hypertension"),
}
URINARY_RETENTION = ANTICHOLINERGIC["urinary-retention-sct"]
GLAUCOMA = ANTICHOLINERGIC["angle-closure-sct"]

#: S12 drugs in cns-depressants and NOT in serotonergic-drugs (tramadol is in both).
OXYCODONE = (RXNORM, "1049621", "oxycodone hydrochloride 5 MG Oral Tablet")
LORAZEPAM = (RXNORM, "197901", "lorazepam 1 MG Oral Tablet")

#: The red flags every plan card must list (PROTOCOL.md §1), as words to look for in its text.
RED_FLAG_QUESTIONS = ("bladder", "bowel", "saddle numbness", "leg weakness", "fever", "cancer", "weight loss", "trauma",
                      "corticosteroid")


def expansion(valueset_id: str) -> set[tuple[str, str]]:
    data = json.loads((CONTENT_DIR / f"ValueSet-{valueset_id}.json").read_text())
    return {(c["system"], c["code"]) for c in data["expansion"]["contains"]}


def test_codes_come_from_the_protocol():
    red_flags, cautions = expansion("back-pain-red-flags"), expansion("anticholinergic-cautions")
    cns, serotonergic = expansion("cns-depressants"), expansion("serotonergic-drugs")
    assert {c[:2] for c in RED_FLAGS.values()} <= red_flags
    assert {c[:2] for c in ANTICHOLINERGIC.values()} <= cautions
    assert {OXYCODONE[:2], LORAZEPAM[:2]} <= cns and not {OXYCODONE[:2], LORAZEPAM[:2]} & serotonergic
    assert TRAMADOL[:2] in cns and TRAMADOL[:2] in serotonergic
    assert SERTRALINE[:2] in serotonergic and SERTRALINE[:2] not in cns
    assert not {c[:2] for c in RED_FLAGS.values()} & cautions


# -- builders -----------------------------------------------------------------------------------------------------


def severe(age: int = 45, hours_ago: float | None = 20, days_ago: float | None = None) -> Patient:
    patient = Patient(age)
    patient.spasm(hours_ago, days_ago=days_ago)
    return patient


def red_flag(patient: Patient, code=CAUDA_EQUINA, **kwargs) -> dict:
    kwargs.setdefault("onset_value", when(days_ago=1))
    return patient.condition(code, **kwargs)


def careplan(patient: Patient, *, status: str = "active", canonical: str = f"{PATHWAY_URL}|1.0.0", created: str | None = None,
             period_start: str | None = None) -> dict:
    resource: dict = {"resourceType": "CarePlan", "status": status, "intent": "plan", "subject": patient.ref,
                      "instantiatesCanonical": [canonical], "title": "Back muscle spasm plan"}
    if created is not None:
        resource["created"] = created
    if period_start is not None:
        resource["period"] = {"start": period_start}
    return patient.add(resource)


def overrides(action) -> bool:
    """The action names its override reasons (the service turns them into the card's overrideReasons)."""
    return any(e.get("url") == OVERRIDE_EXT for e in action.fields.get("extension") or [])


def citations(action) -> list[str]:
    return [d["url"] for d in action.fields.get("documentation") or [] if d.get("type") == "citation" and d.get("url")]


def typed_children(action) -> list:
    """Children that a CDS client would see as suggestions (create, update, remove) or that carry a resource."""
    return [a for a in walk(action.children) if a.resource is not None or (a.fields.get("type") or {}).get("coding")]


def assert_red_flag_only(result, *names: str) -> None:
    assert cards(result) == {"red-flag"}, sorted(cards(result))
    card = get(result, "red-flag")
    assert card.fields["priority"] == "stat"
    assert "red-flags" in rule_codes(card)
    for name in names:
        assert name in card.fields["title"] and name in card.fields["description"]
    assert "evaluate" in text_of(card).lower()
    assert citations(card), "the red-flag guidance is linked"
    assert overrides(card)
    assert resources(result) == [], "no plan, no proposal, no CarePlan"
    assert phase(result) is None and find(result, "cyclobenzaprine-proposal") is None


def assert_normal_plan(result) -> None:
    assert "red-flag" not in cards(result)
    assert "phase-plan" in cards(result)


# ================================================================================== patient-view: red flags first


@pytest.mark.parametrize("key", list(RED_FLAGS))
def test_each_red_flag_category_in_both_systems_gives_one_critical_card(engine, key):
    patient = severe()
    red_flag(patient, RED_FLAGS[key])
    assert_red_flag_only(view(engine, patient), RED_FLAGS[key][2])


@pytest.mark.parametrize("status", ["active", "recurrence", "relapse", None])
def test_an_active_red_flag_by_clinical_status(engine, status):
    patient = severe()
    red_flag(patient, status=status, verification=None if status is None else "confirmed")
    assert_red_flag_only(view(engine, patient), CAUDA_EQUINA[2])


@pytest.mark.parametrize("status", ["resolved", "inactive", "remission"])
def test_a_red_flag_no_longer_active_changes_nothing(engine, status):
    patient = severe()
    red_flag(patient, status=status, onset_value=when(days_ago=400), abatement=when(days_ago=300))
    result = view(engine, patient)
    assert_normal_plan(result)
    assert "cyclobenzaprine-proposal" in cards(result)
    assert cards(result) == cards(view(engine, severe()))


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_a_refuted_red_flag_changes_nothing(engine, verification, with_system):
    patient = severe()
    condition = red_flag(patient, verification=verification)
    if not with_system:
        condition["verificationStatus"] = {"coding": [{"code": verification}]}
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}


def test_a_red_flag_with_a_past_abatement_is_not_active(engine):
    patient = severe()
    red_flag(patient, status=None, verification=None, abatement=when(days_ago=2), onset_value=when(days_ago=60))
    assert_normal_plan(view(engine, patient))


def test_a_red_flag_whose_abatement_is_in_the_future_is_still_active(engine):
    patient = severe()
    red_flag(patient, abatement=when(days_ago=-10))
    assert_red_flag_only(view(engine, patient), CAUDA_EQUINA[2])


@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_a_suspected_red_flag_counts(engine, verification):
    patient = severe()
    red_flag(patient, verification=verification)
    assert_red_flag_only(view(engine, patient), CAUDA_EQUINA[2])


def test_a_red_flag_abating_today_by_date_counts_to_the_end_of_the_day(engine):
    patient = severe()
    red_flag(patient, abatement=CLOCK.date().isoformat())
    assert_red_flag_only(view(engine, patient), CAUDA_EQUINA[2])


def test_a_red_flag_comes_first_when_the_age_is_unknown(engine):
    patient = severe()
    del patient.patient["birthDate"]
    assert "data-unreadable" in cards(view(engine, patient))
    red_flag(patient)
    assert_red_flag_only(view(engine, patient), CAUDA_EQUINA[2])


def test_a_red_flag_without_status_or_onset_counts(engine):
    patient = severe()
    patient.condition(CORD_COMPRESSION, status=None, verification=None)
    assert_red_flag_only(view(engine, patient), CORD_COMPRESSION[2])


def test_a_red_flag_coded_with_https_icd_counts(engine):
    patient = severe()
    red_flag(patient)["code"]["coding"][0]["system"] = "https://hl7.org/fhir/sid/icd-10-cm/"
    assert "red-flag" in cards(view(engine, patient))


@pytest.mark.parametrize("hours_ago,days_ago", [(20, None), (None, 5), (None, 14), (None, 40), (1, None)],
                         ids=["phase-1", "phase-2", "phase-3", "phase-4", "first-hour"])
def test_a_red_flag_suspends_the_protocol_in_every_phase(engine, hours_ago, days_ago):
    patient = severe(hours_ago=hours_ago, days_ago=days_ago)
    assert phase(view(engine, patient)) is not None, "the phase is known without the red flag"
    red_flag(patient, CORD_COMPRESSION)
    assert_red_flag_only(view(engine, patient), CORD_COMPRESSION[2])


@pytest.mark.parametrize("onset", ["none", "future"])
def test_a_red_flag_comes_first_when_the_onset_cannot_be_used(engine, onset):
    patient = Patient(45)
    if onset == "none":
        patient.spasm(onset="none")
    else:
        patient.spasm(hours_ago=-48)
    red_flag(patient)
    assert_red_flag_only(view(engine, patient), CAUDA_EQUINA[2])


def _maoi(p: Patient):
    p.medication(PHENELZINE)


def _sertraline(p: Patient):
    p.medication(SERTRALINE)


def _oxycodone(p: Patient):
    p.medication(OXYCODONE)


def _cirrhosis(p: Patient):
    p.condition(CIRRHOSIS, onset_value=when(days_ago=900))


def _retention(p: Patient):
    p.condition(URINARY_RETENTION, onset_value=when(days_ago=90))


def _long_course(p: Patient):
    p.medication(CYCLOBENZAPRINE_5, started_days_ago=25)


def _plan_in_place(p: Patient):
    careplan(p, created=when(hours_ago=2))


OTHER_FINDINGS = {"maoi": _maoi, "sertraline": _sertraline, "oxycodone": _oxycodone, "cirrhosis": _cirrhosis,
                  "urinary-retention": _retention, "cyclobenzaprine-25-days": _long_course, "plan-in-place": _plan_in_place}


def signature(result) -> set[tuple]:
    return {(a.fields.get("id"), a.fields.get("priority"), a.fields.get("title")) for a in result.actions}


@pytest.mark.parametrize("finding", list(OTHER_FINDINGS))
def test_a_red_flag_holds_back_every_other_card(engine, finding):
    patient = severe()
    OTHER_FINDINGS[finding](patient)
    assert signature(view(engine, patient)) != signature(view(engine, severe())), "the finding changes the cards"
    red_flag(patient, RED_FLAGS["metastasis-sct"])
    assert_red_flag_only(view(engine, patient), RED_FLAGS["metastasis-sct"][2])


def test_a_red_flag_in_an_older_adult_without_severe_spasm(engine):
    patient = Patient(72)
    patient.spasm(days_ago=3, severity=None)
    red_flag(patient, RED_FLAGS["fracture-sct"])
    assert_red_flag_only(view(engine, patient), RED_FLAGS["fracture-sct"][2])


def test_two_red_flags_are_both_named(engine):
    patient = severe()
    red_flag(patient, CAUDA_EQUINA)
    red_flag(patient, RED_FLAGS["infection-sct"])
    result = view(engine, patient)
    assert_red_flag_only(result)
    text = get(result, "red-flag").fields["description"]
    assert CAUDA_EQUINA[2] in text and RED_FLAGS["infection-sct"][2] in text


def test_an_active_and_a_resolved_red_flag(engine):
    patient = severe()
    red_flag(patient, RED_FLAGS["fracture-icd"], status="resolved", abatement=when(days_ago=200), onset_value=when(days_ago=300))
    red_flag(patient, RED_FLAGS["metastasis-icd"])
    result = view(engine, patient)
    assert_red_flag_only(result, RED_FLAGS["metastasis-icd"][2])
    assert "Collapsed vertebra" not in text_of(get(result, "red-flag"))


def test_a_red_flag_without_a_back_spasm_gives_no_cards(engine):
    patient = Patient(45)
    red_flag(patient)
    patient.medication(PHENELZINE)
    assert cards(view(engine, patient)) == set()


def test_a_red_flag_beside_a_resolved_back_spasm_gives_no_cards(engine):
    patient = Patient(45)
    patient.spasm(days_ago=60, status="resolved", abatement=when(days_ago=30))
    red_flag(patient)
    assert cards(view(engine, patient)) == set()


def test_a_red_flag_in_a_minor_gives_no_cards(engine):
    patient = severe(age=16)
    red_flag(patient)
    assert cards(view(engine, patient)) == set()


def test_a_red_flag_of_another_patient_is_ignored(engine):
    patient = severe()
    red_flag(patient)["subject"] = {"reference": "Patient/someone-else"}
    assert_normal_plan(view(engine, patient))


# ================================================================================== order review with a red flag

DRAFTS = {
    "cyclobenzaprine": lambda p: p.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-cbz"),
    "lumbar-support-hcpcs": lambda p: p.draft_service(LUMBAR_ORTHOSIS, resource_type="DeviceRequest", draft_id="dev-brace"),
    "lumbar-support-sct": lambda p: p.draft_service(LUMBOSACRAL_BELT, resource_type="DeviceRequest", draft_id="dev-belt"),
    "tens": lambda p: p.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="dev-tens"),
    "cyclobenzaprine-contained": lambda p: p.draft_medication(CYCLOBENZAPRINE_10, shape="contained", draft_id="rx-cbz-contained"),
    "tens-service-request": lambda p: p.draft_service(TENS_DEVICE, draft_id="sr-tens"),
    "traction": lambda p: p.draft_service(TRACTION, draft_id="sr-traction"),
    "heat": lambda p: p.draft_service(HEAT, draft_id="sr-heat"),
}
NOT_RECOMMENDED_CARD = {"lumbar-support-hcpcs": "draft-lumbar-support", "lumbar-support-sct": "draft-lumbar-support",
                        "tens": "draft-tens", "tens-service-request": "draft-tens", "traction": "draft-traction"}
FLAGGED = ("cyclobenzaprine", "cyclobenzaprine-contained", "lumbar-support-hcpcs", "lumbar-support-sct", "tens",
           "tens-service-request", "traction")


@pytest.mark.parametrize("kind", FLAGGED)
@pytest.mark.parametrize("key", ["cauda-equina-sct", "fracture-icd"])
def test_a_flagged_draft_gets_the_red_flag_warning(engine, kind, key):
    patient = severe()
    red_flag(patient, RED_FLAGS[key])
    result = review(engine, patient, DRAFTS[kind](patient))
    assert cards(result) == {"draft-red-flag"}, sorted(cards(result))
    card = get(result, "draft-red-flag")
    assert card.fields["priority"] == "urgent"
    assert RED_FLAGS[key][2] in card.fields["title"] and RED_FLAGS[key][2] in card.fields["description"]
    assert overrides(card) and citations(card)
    assert typed_children(card) == [], "no suggestion to remove the draft"


def test_a_heat_draft_gets_no_red_flag_card(engine):
    patient = severe()
    red_flag(patient)
    assert cards(review(engine, patient, DRAFTS["heat"](patient))) == set()


@pytest.mark.parametrize("kind", list(NOT_RECOMMENDED_CARD))
def test_without_a_red_flag_the_not_recommended_cards_come_back(engine, kind):
    patient = severe()
    red_flag(patient, status="resolved", abatement=when(days_ago=100), onset_value=when(days_ago=200))
    result = review(engine, patient, DRAFTS[kind](patient))
    assert cards(result) == {NOT_RECOMMENDED_CARD[kind]}
    assert "heat" in " ".join(text_of(a).lower() for a in walk(result.actions))


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_a_refuted_red_flag_does_not_flag_a_draft(engine, verification):
    patient = severe()
    red_flag(patient, verification=verification)
    assert cards(review(engine, patient, DRAFTS["tens"](patient))) == {"draft-tens"}
    assert cards(review(engine, patient, DRAFTS["cyclobenzaprine"](patient))) == set()


@pytest.mark.parametrize("setup,draft,expected", [
    (_maoi, lambda p: p.draft_medication(CYCLOBENZAPRINE_5), "draft-maoi"),
    (_sertraline, lambda p: p.draft_medication(CYCLOBENZAPRINE_5), "draft-serotonergic"),
    (_oxycodone, lambda p: p.draft_medication(CYCLOBENZAPRINE_5), "draft-cns-depressant"),
    (_cirrhosis, lambda p: p.draft_medication(CYCLOBENZAPRINE_5), "draft-severe-hepatic"),
    (_retention, lambda p: p.draft_medication(CYCLOBENZAPRINE_5), "draft-anticholinergic"),
    (lambda p: None, lambda p: p.draft_medication(CYCLOBENZAPRINE_10, days=30), "draft-course-too-long"),
    (_long_course, lambda p: p.draft_medication(CYCLOBENZAPRINE_5), "draft-duplicate"),
], ids=["S1", "S7", "S12", "S4", "S13", "S8", "S10"])
def test_cyclobenzaprine_safety_cards_stay_beside_the_red_flag(engine, setup, draft, expected):
    patient = severe()
    setup(patient)
    red_flag(patient)
    result = review(engine, patient, draft(patient))
    assert cards(result) == {"draft-red-flag", expected}, sorted(cards(result))


@pytest.mark.parametrize("kind", ["cyclobenzaprine", "lumbar-support-hcpcs", "tens", "traction"])
def test_a_red_flag_without_a_back_spasm_gives_no_red_flag_card(engine, kind):
    """The red-flag warning is for the patient the protocol is suspended for (§1: "such a patient"): one with an
    active back spasm. Without one the protocol does not apply, and the label's safety rules alone review the draft."""
    patient = Patient(45)
    red_flag(patient)
    assert "draft-red-flag" not in cards(review(engine, patient, DRAFTS[kind](patient)))


# ================================================================================== the plan card lists the red flags


@pytest.mark.parametrize("hours_ago,days_ago,expected", [(20, None, 1), (None, 5, 2), (None, 14, 3), (None, 40, 4)])
def test_every_plan_card_lists_the_red_flags_to_ask_about(engine, hours_ago, days_ago, expected):
    patient = severe(hours_ago=hours_ago, days_ago=days_ago)
    result = view(engine, patient)
    assert phase(result) == expected
    text = get(result, "phase-plan").fields["description"].lower()
    missing = [w for w in RED_FLAG_QUESTIONS if w not in text]
    assert not missing, missing


def test_the_plan_in_place_card_lists_the_red_flags_too(engine):
    patient = severe(days_ago=5)
    careplan(patient, created=when(days_ago=1))
    text = get(view(engine, patient), "phase-plan-in-place").fields["description"].lower()
    missing = [w for w in RED_FLAG_QUESTIONS if w not in text]
    assert not missing, missing


def test_phase_4_says_consider_referral(engine):
    result = view(engine, severe(days_ago=40))
    referral = get(result, "phase-4-multidisciplinary")
    assert referral.fields["title"].lower().startswith("consider")
    assert "consider referral" in text_of(get(result, "phase-4")).lower()
    assert referral.resource and referral.resource["resourceType"] == "ServiceRequest"
    assert referral.resource.get("intent") == "proposal" or referral.resource.get("status") == "draft"


# ================================================================================== S13 on patient-view


def note_names(result, note_id: str) -> str:
    return text_of(get(result, note_id))


@pytest.mark.parametrize("status", ["active", "resolved"])
@pytest.mark.parametrize("key", list(ANTICHOLINERGIC))
def test_s13_the_proposal_card_is_the_warning(engine, key, status):
    code = ANTICHOLINERGIC[key]
    patient = severe()
    patient.condition(code, status=status, onset_value=when(days_ago=400),
                      abatement=when(days_ago=200) if status == "resolved" else None)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}, "no separate S13 card"
    card = get(result, "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "urgent"
    assert code[2] in card.fields["title"]
    assert [c.resource["resourceType"] for c in card.children if c.resource] == ["MedicationRequest"]
    note = get(result, "anticholinergic-note")
    assert "S13" in rule_codes(note)
    assert code[2] in text_of(note)
    assert "urinary retention" in text_of(note).lower() and "eye" in text_of(note).lower()


@pytest.mark.parametrize("status", ["inactive", "remission", None])
def test_s13_counts_whatever_the_clinical_status(engine, status):
    patient = severe()
    patient.condition(GLAUCOMA, status=status, onset_value=when(days_ago=800))
    card = get(view(engine, patient), "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "urgent" and GLAUCOMA[2] in card.fields["title"]


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
def test_s13_a_refuted_condition_does_not_count(engine, verification, with_system):
    patient = severe()
    condition = patient.condition(URINARY_RETENTION, verification=verification, onset_value=when(days_ago=30))
    if not with_system:
        condition["verificationStatus"] = {"coding": [{"code": verification}]}
    result = view(engine, patient)
    card = get(result, "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "routine" and "Retention" not in text_of(card)
    assert find(result, "anticholinergic-note") is None
    draft_result = review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5))
    assert cards(draft_result) == set()


def test_s13_two_conditions_are_both_named(engine):
    patient = severe()
    patient.condition(URINARY_RETENTION, onset_value=when(days_ago=30))
    patient.condition(GLAUCOMA, status="resolved", onset_value=when(days_ago=500), abatement=when(days_ago=400))
    result = view(engine, patient)
    card = get(result, "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "urgent"
    assert "atropine-like" in card.fields["title"]
    note = note_names(result, "anticholinergic-note")
    assert URINARY_RETENTION[2] in note and GLAUCOMA[2] in note


def _s7(p: Patient):
    p.medication(SERTRALINE)


def _s12(p: Patient):
    p.medication(OXYCODONE, kind="statement")


def _s12_benzodiazepine(p: Patient):
    p.medication(LORAZEPAM)


def _s13(p: Patient):
    p.condition(URINARY_RETENTION, status="resolved", onset_value=when(days_ago=300), abatement=when(days_ago=250))


COMBINATIONS = {
    "S13+S7": ([_s13, _s7], "urgent", {"serotonergic-note": SERTRALINE, "anticholinergic-note": URINARY_RETENTION}),
    "S13+S12": ([_s13, _s12], "urgent", {"anticholinergic-note": URINARY_RETENTION, "cns-depressant-note": OXYCODONE}),
    "S13+S12-benzodiazepine": ([_s13, _s12_benzodiazepine], "urgent",
                               {"anticholinergic-note": URINARY_RETENTION, "cns-depressant-note": LORAZEPAM}),
    "S7+S12": ([_s7, _s12], "urgent", {"serotonergic-note": SERTRALINE, "cns-depressant-note": OXYCODONE}),
    "S13+S7+S12": ([_s13, _s7, _s12], "urgent", {"serotonergic-note": SERTRALINE, "anticholinergic-note": URINARY_RETENTION,
                                                  "cns-depressant-note": OXYCODONE}),
}
KIND_WORDS = {"serotonergic-note": "serotonin", "anticholinergic-note": "atropine-like", "cns-depressant-note": "sedation"}


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_one_proposal_card_names_every_finding(engine, name):
    setups, priority, notes = COMBINATIONS[name]
    patient = severe()
    for setup in setups:
        setup(patient)
    result = view(engine, patient)
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}, sorted(cards(result))
    card = get(result, "cyclobenzaprine-proposal")
    assert card.fields["priority"] == priority
    title = card.fields["title"]
    for note_id, code in notes.items():
        assert KIND_WORDS[note_id] in title, (note_id, title)
        assert code[2] in note_names(result, note_id), note_id
    present = {c.fields.get("id") for c in card.children}
    assert set(notes) <= present
    assert not ({"serotonergic-note", "anticholinergic-note", "cns-depressant-note"} - set(notes)) & present


@pytest.mark.parametrize("setup,code,priority", [(_s13, URINARY_RETENTION, "urgent"), (_s7, SERTRALINE, "urgent"),
                                                 (_s12, OXYCODONE, "routine")], ids=["S13", "S7", "S12"])
def test_one_finding_is_named_in_the_title(engine, setup, code, priority):
    patient = severe()
    setup(patient)
    card = get(view(engine, patient), "cyclobenzaprine-proposal")
    assert card.fields["priority"] == priority
    assert code[2] in card.fields["title"]


def test_tramadol_is_named_as_serotonergic_and_sedating(engine):
    patient = severe()
    patient.medication(TRAMADOL)
    result = view(engine, patient)
    card = get(result, "cyclobenzaprine-proposal")
    assert card.fields["priority"] == "urgent"
    assert "tramadol" in note_names(result, "serotonergic-note").lower()
    assert "tramadol" in note_names(result, "cns-depressant-note").lower()


@pytest.mark.parametrize("setup,withheld", [(_maoi, "withheld-maoi"), (_cirrhosis, "withheld-hepatic")])
def test_s13_does_not_bring_back_a_withheld_proposal(engine, setup, withheld):
    patient = severe()
    _s13(patient)
    setup(patient)
    result = view(engine, patient)
    assert withheld in cards(result)
    assert find(result, "cyclobenzaprine-proposal") is None and find(result, "anticholinergic-note") is None


def test_s13_in_an_older_adult_gives_no_proposal_but_the_draft_is_warned_twice(engine):
    patient = severe(age=70)
    _s13(patient)
    assert "cyclobenzaprine-proposal" not in cards(view(engine, patient))
    result = review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5))
    assert {"draft-older-adult", "draft-anticholinergic"} <= cards(result)


# ================================================================================== S13 on drafts


@pytest.mark.parametrize("status", ["active", "resolved"])
@pytest.mark.parametrize("key", ["urinary-retention-icd", "angle-closure-sct", "raised-iop-icd"])
def test_s13_a_cyclobenzaprine_draft_gets_a_warning_without_a_removal(engine, key, status):
    code = ANTICHOLINERGIC[key]
    patient = severe()
    patient.condition(code, status=status, onset_value=when(days_ago=100), abatement=when(days_ago=50) if status == "resolved" else None)
    result = review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5, days=7))
    assert cards(result) == {"draft-anticholinergic"}
    card = get(result, "draft-anticholinergic")
    assert card.fields["priority"] == "urgent" and "S13" in rule_codes(card)
    assert code[2] in card.fields["title"] and code[2] in card.fields["description"]
    assert overrides(card) and typed_children(card) == []


@pytest.mark.parametrize("kind", ["heat", "tens"])
def test_s13_other_drafts_get_no_anticholinergic_card(engine, kind):
    patient = severe()
    _s13(patient)
    assert "draft-anticholinergic" not in cards(review(engine, patient, DRAFTS[kind](patient)))


def test_s13_with_s7_and_s12_on_a_draft(engine):
    patient = severe()
    for setup in (_s13, _s7, _s12):
        setup(patient)
    result = review(engine, patient, patient.draft_medication(CYCLOBENZAPRINE_5))
    assert cards(result) == {"draft-anticholinergic", "draft-serotonergic", "draft-cns-depressant"}


# ================================================================================== the care plan in place


def in_place(result) -> bool:
    ids = cards(result)
    assert len(ids & {"phase-plan", "phase-plan-in-place"}) == 1, sorted(ids)
    return "phase-plan-in-place" in ids


# (onset days ago, created days ago): phase 2 began 3 days ago, phase 3 7 days after onset, phase 4 28 days after.
@pytest.mark.parametrize("onset_days,created_days,expected", [
    (20 / 24, 2 / 24, True), (20 / 24, 20 / 24, True), (20 / 24, 21 / 24, False),
    (5, 2, True), (5, 3, True), (5, 3.01, False), (5, 4, False),
    (14, 6, True), (14, 7, True), (14, 8, False),
    (40, 10, True), (40, 12, True), (40, 13, False),
], ids=["p1-after", "p1-at-onset", "p1-before-onset", "p2-after", "p2-at-start", "p2-just-before", "p2-made-in-p1",
        "p3-after", "p3-at-start", "p3-made-in-p2", "p4-after", "p4-at-start", "p4-made-in-p3"])
def test_a_plan_is_in_place_from_the_start_of_the_current_phase(engine, onset_days, created_days, expected):
    patient = Patient(45)
    patient.spasm(days_ago=onset_days)
    careplan(patient, created=when(days_ago=created_days))
    result = view(engine, patient)
    assert in_place(result) is expected


@pytest.mark.parametrize("canonical", [PATHWAY_URL, f"{PATHWAY_URL}|1.0.0"], ids=["bare", "versioned"])
def test_the_plan_in_place_card_says_so_and_offers_nothing(engine, canonical):
    patient = severe(days_ago=5)
    careplan(patient, canonical=canonical, created=when(days_ago=1))
    result = view(engine, patient)
    assert in_place(result)
    card = get(result, "phase-plan-in-place")
    assert "in place" in card.fields["title"] and "in place" in card.fields["description"]
    assert "early recovery" in card.fields["title"]
    assert typed_children(card) == [] and card.resource is None
    assert day(1) in card.fields["description"], "the card says when the plan was created"


@pytest.mark.parametrize("status", ["completed", "revoked", "draft", "entered-in-error"])
def test_a_plan_that_is_not_active_is_not_in_place(engine, status):
    patient = severe()
    careplan(patient, status=status, created=when(hours_ago=2))
    result = view(engine, patient)
    assert not in_place(result)
    assert resources(result, "CarePlan") == [] and find(result, "phase-1-heat").resource is not None


@pytest.mark.parametrize("canonical", [
    "http://example.org/fhir/other-protocol/PlanDefinition/low-back-pain",
    f"{PATHWAY_URL}-v2",
    "http://example.org/fhir/back-spasm-cds/PlanDefinition/back-spasm-order-review",
], ids=["other-protocol", "lookalike", "order-review"])
def test_another_protocols_plan_is_not_in_place(engine, canonical):
    patient = severe()
    careplan(patient, canonical=canonical, created=when(hours_ago=2))
    assert not in_place(view(engine, patient))


def test_a_plan_without_instantiates_canonical_is_not_in_place(engine):
    patient = severe()
    careplan(patient, created=when(hours_ago=2)).pop("instantiatesCanonical")
    assert not in_place(view(engine, patient))


@pytest.mark.parametrize("start_days,expected", [(1, True), (4, False)])
def test_a_plan_dated_by_its_period_start_only(engine, start_days, expected):
    patient = severe(days_ago=5)
    careplan(patient, period_start=when(days_ago=start_days))
    assert in_place(view(engine, patient)) is expected


def test_created_wins_over_the_period_start(engine):
    patient = severe(days_ago=5)
    careplan(patient, created=when(days_ago=4), period_start=when(days_ago=1))
    assert not in_place(view(engine, patient))


def test_a_plan_dated_by_day_today_is_in_place(engine):
    patient = severe(hours_ago=20)
    careplan(patient, created=CLOCK.date().isoformat())
    assert in_place(view(engine, patient))


def test_one_plan_of_an_earlier_phase_and_one_of_this_phase(engine):
    patient = severe(days_ago=14)
    careplan(patient, status="completed", created=when(days_ago=12))
    careplan(patient, created=when(days_ago=2))
    assert in_place(view(engine, patient))


def test_a_plan_of_another_patient_is_not_in_place(engine):
    patient = severe()
    careplan(patient, created=when(hours_ago=2))["subject"] = {"reference": "Patient/someone-else"}
    assert not in_place(view(engine, patient))


def test_a_plan_in_place_keeps_the_medication_cards(engine):
    patient = severe()
    patient.medication(SERTRALINE)
    careplan(patient, created=when(hours_ago=2))
    result = view(engine, patient)
    assert cards(result) == {"phase-plan-in-place", "cyclobenzaprine-proposal"}


# ================================================================================== worked examples 13, 14, 15


def example_13() -> Patient:
    """Active cauda equina syndrome and a severe spasm, day 1."""
    patient = severe(hours_ago=20)
    red_flag(patient, CAUDA_EQUINA, onset_value=when(hours_ago=6))
    return patient


def example_14() -> tuple[Patient, dict]:
    """Urinary retention on record, severe spasm, phase 1; the order-sign draft is cyclobenzaprine 5 mg TID for 7 days."""
    patient = severe(hours_ago=20)
    patient.condition(URINARY_RETENTION, status="resolved", onset_value=when(days_ago=400), abatement=when(days_ago=380))
    return patient, patient.draft_medication(CYCLOBENZAPRINE_5, days=7, draft_id="rx-ex14")


def example_15() -> tuple[Patient, dict]:
    """Age 70, order-sign of cyclobenzaprine 10 mg TID for 10 days (30 tablets)."""
    patient = severe(age=70, hours_ago=30)
    return patient, patient.draft_medication(CYCLOBENZAPRINE_10, days=10, quantity=30, supply_days=10, draft_id="rx-ex15")


def check_example_15_replacement(order: dict) -> None:
    (dosage,) = order["dosageInstruction"]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 5 and dosage["doseAndRate"][0]["doseQuantity"]["code"] == "mg"
    assert dosage["timing"]["repeat"]["frequency"] == 3 and dosage["timing"]["repeat"]["period"] == 1
    assert dosage["timing"]["repeat"]["boundsDuration"]["value"] <= 10
    assert dosage["maxDosePerPeriod"]["numerator"]["value"] == 15
    text = dosage["text"]
    assert "5 mg" in text and "three times daily" in text and "10 days" in text and "15 mg a day" in text and "150 mg" in text
    assert "increase" not in text.replace("do not increase", ""), text
    assert "30 days" not in text and "10 mg" not in text
    supply = order["dispenseRequest"]
    assert supply.get("numberOfRepeatsAllowed", 0) == 0
    assert supply["quantity"]["value"] * 5 <= 150
    assert supply["expectedSupplyDuration"]["value"] <= 10
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == CYCLOBENZAPRINE_5[1]


def test_example_13_engine(engine):
    assert_red_flag_only(view(engine, example_13()), "Cauda equina syndrome")


def test_example_14_engine(engine):
    patient, draft = example_14()
    result = view(engine, patient)
    assert phase(result) == 1
    assert cards(result) == {"phase-plan", "cyclobenzaprine-proposal"}
    proposal = get(result, "cyclobenzaprine-proposal")
    assert proposal.fields["priority"] == "urgent" and "Retention of urine" in proposal.fields["title"]
    (order,) = [c.resource for c in proposal.children if c.resource]
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == CYCLOBENZAPRINE_5[1]
    reviewed = review(engine, patient, draft)
    assert cards(reviewed) == {"draft-anticholinergic"}
    assert typed_children(get(reviewed, "draft-anticholinergic")) == []


def test_example_15_engine(engine):
    patient, draft = example_15()
    result = review(engine, patient, draft)
    assert cards(result) == {"draft-older-adult"}
    (replacement,) = resources(result, "MedicationRequest")
    check_example_15_replacement(replacement)
    assert replacement["id"] == draft["id"]


# -- through ``back-spasm-cds apply`` ---------------------------------------------------------------------------


@pytest.fixture
def reuse_engine(engine, monkeypatch):
    monkeypatch.setattr(protocol.engine.apply, "Engine", lambda content, *args, **kwargs: engine)


def apply_cli(tmp_path: Path, capsys, data: dict) -> object:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    code = main(["apply", "--data", str(path), "--at", AT])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def request_group_ids(careplan_out: dict) -> list[str]:
    group = next(r for r in careplan_out["contained"] if r["resourceType"] == "RequestGroup")
    return [a["id"] for a in group.get("action") or []]


def hook_request(hook: str, patient: Patient, drafts: list[dict]) -> dict:
    body = {"hook": hook, "hookInstance": "6f0b1b8e-2b83-4d53-9d2a-3b7f0c9d5e21",
            "context": {"patientId": patient.id, "userId": "Practitioner/dr-1",
                        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": d} for d in drafts]}},
            "prefetch": {"patient": patient.patient, "conditions": patient.bundle()}}
    if hook == "order-select":
        body["context"]["selections"] = [f"{d['resourceType']}/{d['id']}" for d in drafts]
    return body


def test_example_13_apply(tmp_path, capsys, reuse_engine):
    out = apply_cli(tmp_path, capsys, example_13().bundle("collection"))
    assert out["resourceType"] == "CarePlan"
    assert request_group_ids(out) == ["red-flag"]
    assert sorted(r["resourceType"] for r in out["contained"]) == ["CommunicationRequest", "RequestGroup"], "no orders"
    (note,) = [r for r in out["contained"] if r["resourceType"] == "CommunicationRequest"]
    assert "Cauda equina syndrome" in json.dumps(note)
    action = next(r for r in out["contained"] if r["resourceType"] == "RequestGroup")["action"][0]
    assert action["priority"] == "stat" and "Cauda equina syndrome" in action["title"]
    assert not action.get("action")


def test_example_13_apply_on_a_hook_body(tmp_path, capsys, reuse_engine):
    patient = example_13()
    body = {"hook": "patient-view", "hookInstance": "0d4c1c51-6a43-4a1d-9a34-d4f5b9c3a7e0",
            "context": {"patientId": patient.id, "userId": "Practitioner/dr-1"},
            "prefetch": {"patient": patient.patient, "conditions": patient.bundle()}}
    assert request_group_ids(apply_cli(tmp_path, capsys, body)) == ["red-flag"]


def test_example_14_apply(tmp_path, capsys, reuse_engine):
    patient, draft = example_14()
    viewed = apply_cli(tmp_path, capsys, patient.bundle("collection"))
    assert request_group_ids(viewed) == ["phase-plan", "cyclobenzaprine-proposal"]
    group = next(r for r in viewed["contained"] if r["resourceType"] == "RequestGroup")
    proposal = group["action"][1]
    assert proposal["priority"] == "urgent" and "Retention of urine" in proposal["title"]
    assert "anticholinergic-note" in {a["id"] for a in proposal.get("action") or []}
    signed = apply_cli(tmp_path, capsys, hook_request("order-sign", patient, [draft]))
    assert request_group_ids(signed) == ["draft-anticholinergic"]
    assert not any(r["resourceType"] == "MedicationRequest" for r in signed["contained"]), "no suggestion"


def test_example_15_apply(tmp_path, capsys, reuse_engine):
    patient, draft = example_15()
    out = apply_cli(tmp_path, capsys, hook_request("order-sign", patient, [draft]))
    assert request_group_ids(out) == ["draft-older-adult"]
    (replacement,) = [r for r in out["contained"] if r["resourceType"] == "MedicationRequest"]
    check_example_15_replacement(replacement)


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_red_flag_drafts_apply(tmp_path, capsys, reuse_engine, hook):
    patient = severe()
    red_flag(patient)
    drafts = [DRAFTS[k](patient) for k in ("tens", "heat")]
    out = apply_cli(tmp_path, capsys, hook_request(hook, patient, drafts))
    assert isinstance(out, list) and [request_group_ids(c) for c in out] == [["draft-red-flag"], []]


# -- through the service ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("red-flags")).test_client()


def post(client, hook: str, patient: Patient, drafts: list[dict] = (), *, check: bool = True, **kwargs) -> list[dict]:
    """The cards of a hook call; with ``check``, the response must follow every CDS Hooks and §6 card rule."""
    app = client.application
    body = hook_body(app, hook, patient, drafts, **kwargs)
    answer = call(client, hook, body)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:2000]
    payload = answer.get_json()
    if check:
        assert response_problems(payload) == []
    return payload["cards"]


def labels(card: dict) -> list[str]:
    return [s["label"] for s in card.get("suggestions") or []]


def test_example_13_service(client):
    (card,) = post(client, "patient-view", example_13())
    assert card["indicator"] == "critical" and topic(card) == "red-flags"
    assert "Cauda equina syndrome" in card["summary"] and "Cauda equina syndrome" in card["detail"]
    assert "suggestions" not in card and card["overrideReasons"]
    assert any("pubmed" in link["url"] for link in card["links"])


def test_example_14_service(client):
    patient, draft = example_14()
    viewed = post(client, "patient-view", patient)
    assert [c["indicator"] for c in viewed] == ["info", "warning"]
    plan = by_topic(viewed, "phase-plan")
    assert labels(plan) == ["Create the care plan for this phase"]
    proposal = viewed[1]
    assert "Retention of urine" in proposal["summary"] and proposal["overrideReasons"]
    assert "atropine-like" in proposal["detail"]
    (order,) = [a["resource"] for s in proposal["suggestions"] for a in s["actions"]]
    assert order["resourceType"] == "MedicationRequest" and not r4b_problems(order)
    for hook in ("order-select", "order-sign"):
        (card,) = post(client, hook, patient, [draft])
        assert card["indicator"] == "warning" and topic(card) == "S13"
        assert "Retention of urine" in card["summary"] and "Retention of urine" in card["detail"]
        assert card["overrideReasons"] and "suggestions" not in card


def test_example_15_service(client):
    patient, draft = example_15()
    (card,) = post(client, "order-sign", patient, [draft])
    assert card["indicator"] == "warning" and topic(card) == "S6"
    (suggestion,) = card["suggestions"]
    assert suggestion.get("isRecommended") is True
    (action,) = suggestion["actions"]
    assert action["type"] == "update" and action["resource"]["id"] == draft["id"]
    check_example_15_replacement(action["resource"])
    assert suggestion["label"] == "Change to " + action["resource"]["dosageInstruction"][0]["text"]
    assert not r4b_problems(action["resource"])


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize("kind", list(DRAFTS))
def test_red_flag_drafts_service(client, hook, kind):
    patient = severe()
    red_flag(patient, RED_FLAGS["infection-icd"])
    found = post(client, hook, patient, [DRAFTS[kind](patient)])
    if kind == "heat":
        assert found == []
        return
    (card,) = found
    assert card["indicator"] == "warning" and topic(card) == "red-flags"
    assert RED_FLAGS["infection-icd"][2] in card["detail"] and "Osteomyelitis" in card["summary"]
    assert card["overrideReasons"] and "suggestions" not in card


def test_order_select_reviews_only_the_selection(client):
    patient = severe()
    red_flag(patient)
    drafts = [DRAFTS["tens"](patient), DRAFTS["traction"](patient)]
    (card,) = post(client, "order-select", patient, drafts, selections=["ServiceRequest/sr-traction"])
    assert topic(card) == "red-flags"


def test_red_flag_service_with_other_findings(client):
    patient = severe(days_ago=40)
    _maoi(patient)
    _s13(patient)
    red_flag(patient, RED_FLAGS["metastasis-sct"])
    (card,) = post(client, "patient-view", patient)
    assert card["indicator"] == "critical" and RED_FLAGS["metastasis-sct"][2] in card["summary"]
    signed = post(client, "order-sign", patient, [DRAFTS["cyclobenzaprine"](patient)])
    assert topics(signed) == ["S1", "S13", "red-flags"]
    assert {c["indicator"] for c in signed} == {"critical", "warning"}


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_one_proposal_card_service(client, name):
    setups, _, notes = COMBINATIONS[name]
    patient = severe()
    for setup in setups:
        setup(patient)
    found = post(client, "patient-view", patient)
    assert topics(found) == ["cyclobenzaprine", "phase-plan"]
    proposal = by_topic(found, "cyclobenzaprine")
    assert proposal["indicator"] == "warning" and proposal["overrideReasons"]
    assert proposal["summary"].startswith("Cyclobenzaprine for severe spasm, with cautions: ")
    for note_id, code in notes.items():
        assert KIND_WORDS[note_id] in proposal["summary"] and code[2] in proposal["detail"]
    assert labels(proposal) == ["Order cyclobenzaprine 5 mg three times daily for up to 21 days"]


@pytest.mark.parametrize("verification,indicator", [("confirmed", "warning"), ("refuted", "info"), ("entered-in-error", "info")])
def test_s13_verification_service(client, verification, indicator):
    patient = severe()
    patient.condition(GLAUCOMA, status="resolved", verification=verification, onset_value=when(days_ago=900))
    proposal = by_topic(post(client, "patient-view", patient), "cyclobenzaprine")
    assert proposal["indicator"] == indicator
    assert (GLAUCOMA[2] in proposal["summary"]) is (indicator == "warning")
    signed = post(client, "order-sign", patient, [patient.draft_medication(CYCLOBENZAPRINE_5)])
    assert topics(signed) == (["S13"] if indicator == "warning" else [])


def test_red_flag_without_a_spasm_service(client):
    patient = Patient(45)
    red_flag(patient)
    assert post(client, "patient-view", patient) == []


def test_resolved_red_flag_service(client):
    patient = severe()
    red_flag(patient, status="resolved", abatement=when(days_ago=30), onset_value=when(days_ago=90))
    viewed = post(client, "patient-view", patient)
    assert topics(viewed) == sorted(["phase-plan", "cyclobenzaprine"])
    (card,) = post(client, "order-sign", patient, [DRAFTS["lumbar-support-hcpcs"](patient)])
    assert topic(card) != "red-flags" and card["suggestions"]


def test_plan_in_place_service_from_the_accepted_suggestion(client, tmp_path):
    """The CarePlan the plan card suggests, once accepted (made active), is the plan in place; in the next phase
    it no longer covers the plan and the card offers a new one."""
    patient = severe(days_ago=5, hours_ago=None)
    first = by_topic(post(client, "patient-view", patient), "phase-plan")
    (suggestion,) = first["suggestions"]
    accepted = copy.deepcopy(suggestion["actions"][0]["resource"])
    assert accepted["resourceType"] == "CarePlan"
    assert accepted["instantiatesCanonical"][0].split("|")[0] == PATHWAY_URL
    accepted.update({"id": "accepted-plan", "status": "active"})
    patient.add(accepted)
    again = post(client, "patient-view", patient, check=False)
    (card,) = [c for c in again if topic(c) == "phase-plan"]
    assert card["summary"].endswith("early recovery phase plan in place")
    assert "suggestions" not in card and "in place" in card["detail"]
    for word in RED_FLAG_QUESTIONS:
        assert word in card["detail"].lower()
    later = make_app(tmp_path, clock=CLOCK + timedelta(days=3)).test_client()
    plan = by_topic(post(later, "patient-view", patient), "phase-plan")
    assert plan["summary"].endswith("rehabilitation phase plan") and labels(plan) == ["Create the care plan for this phase"]


@pytest.mark.parametrize("status,expected", [("active", True), ("completed", False), ("revoked", False)])
def test_plan_in_place_service(client, status, expected):
    patient = severe()
    careplan(patient, status=status, created=when(hours_ago=3))
    found = post(client, "patient-view", patient, check=not expected)
    assert topics(found) == ["cyclobenzaprine", "phase-plan"]
    plan = by_topic(found, "phase-plan")
    assert ("suggestions" not in plan) is expected
    assert plan["summary"].endswith("plan in place") is expected


def test_the_plan_in_place_card_follows_the_card_rules(client):
    patient = severe()
    careplan(patient, created=when(hours_ago=3))
    post(client, "patient-view", patient)
