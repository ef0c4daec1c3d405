"""Suggestions, read the way a CDS client acts on them (PROTOCOL.md §4, §4a, §7 example 15).

A CDS client shows the cards, the clinician accepts suggestions, and the client applies their actions to the
draft orders: deletes, then creates, then updates (an update replaces the draft with the same id). The protocol
promises that whatever is accepted gives one compliant order, so these tests accept the suggestions and check
the orders that result, with their own reading of the structure (not the engine's):

- every suggestion has a ``uuid``, and a card whose suggestions are alternatives (``at-most-one``) recommends
  at most one of them;
- every update suggestion for one draft carries the same fully corrected order;
- the corrected drafts, sent again to the same hook, raise no S8 (course), S9 (dose) or unreadable-data card,
  and by structure: dose and doses a day within the label (5 mg, 15 mg a day, immediate release for S5/S6
  patients), one dosage step, course at most 21 days given only by ``boundsDuration``, no repeats;
- a correction never lengthens the course, adds repeats, or adds milligrams in total;
- the written instructions are rewritten from the corrected structure (no "for 30 days" beside 21 days, no
  "increase" for S5/S6), and example 15 says exactly 5 mg three times daily, 15 mg a day, 150 mg in all;
- every suggested resource is valid R4 (fhir.resources R4B models; the independent checker when installed);
- on patient-view, one change is offered once (the S11 stop, the cyclobenzaprine proposal), and a card that
  only informs has no override reasons.

The drafts cover the shapes EHRs send: doses in mg and in tablets, extended release, a titration with two
dosage steps, a course by ``boundsPeriod``, by supply with repeats, by quantity, a contained Medication, an
as-needed order, and two cyclobenzaprine drafts at once.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest

from service import state_of
from tests.fhir_check import fhir_check
from tests.patients import (
    CIRRHOSIS,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_7_5,
    CYCLOBENZAPRINE_10,
    CYCLOBENZAPRINE_ER_15,
    CYCLOBENZAPRINE_ER_30,
    FATTY_LIVER,
    HEART_FAILURE,
    PHENELZINE,
    RXNORM,
    TRICYCLIC_ALLERGY,
    UCUM,
    Patient,
    day,
)
from tests.service_helpers import by_topic, cards_of, hook_body, make_app, r4b_problems, response_problems, topic, topics

VS = "http://example.org/fhir/back-spasm-cds/ValueSet/"
ORDER_HOOKS = ("order-select", "order-sign")
#: cards that must not come back once the suggestions are applied (the order is within the limits and readable).
FIXED_TOPICS = {"S8", "S9", "unreadable-data"}
#: patient-view cards that only say why cyclobenzaprine is not proposed (PROTOCOL §4a: nothing to override).
WITHHELD_TOPICS = {"S1", "S2", "S3", "S4", "S6", "S10"}

#: RxNorm code → (mg per tablet or capsule, extended release), the products of ValueSet cyclobenzaprine used here.
STRENGTH = {
    CYCLOBENZAPRINE_5[1]: (5.0, False),
    CYCLOBENZAPRINE_7_5[1]: (7.5, False),
    CYCLOBENZAPRINE_10[1]: (10.0, False),
    CYCLOBENZAPRINE_ER_15[1]: (15.0, True),
    CYCLOBENZAPRINE_ER_30[1]: (30.0, True),
}
DAYS_PER_UNIT = {"h": 1 / 24, "d": 1, "wk": 7, "mo": 30, "a": 365}
TIMING_CODES = {"QD": 1, "BID": 2, "TID": 3, "QID": 4, "Q4H": 6, "Q6H": 4, "Q8H": 3, "Q12H": 2, "QOD": 0.5}
FREQUENCY_WORDS = {1: r"once", 2: r"(twice|two times)", 3: r"three times", 4: r"four times"}
NUMBER_WORDS = {"half": 0.5, "one": 1, "two": 2, "three": 3, "four": 4, "1": 1, "2": 2, "3": 3, "4": 4}
#: text that offers a higher dose, which a 5 mg replacement for S5/S6 must not carry.
INCREASE = re.compile(r"\bmay\b[^.;]*\bincrease|\bincrease[sd]?\s+(the\s+dose\s+)?to\b|\btitrate\s+up\b|\bup\s+to\s+10\s*mg|\b10\s*mg\b",
                      re.I)


# ------------------------------------------------------------------------------------------------ the cases


@dataclass
class Case:
    """A patient with cyclobenzaprine drafts; ``low_dose`` when S5 or S6 applies (5 mg a dose, 15 mg a day)."""

    name: str
    patient: Patient
    drafts: list[dict]
    low_dose: bool = False
    no_extended_release: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


def mg(value: float) -> dict:
    return {"value": value, "unit": "mg", "system": UCUM, "code": "mg"}


def days(value: float) -> dict:
    return {"value": value, "unit": "days", "system": UCUM, "code": "d"}


def severe(age: int = 45) -> Patient:
    """An adult with severe back spasm that began 20 hours ago (phase 1)."""
    patient = Patient(age)
    patient.spasm(20)
    return patient


def case_10_mg_tid_30_days() -> Case:
    patient = severe()
    return Case("10-mg-tid-30-days", patient, [patient.draft_medication(CYCLOBENZAPRINE_10, per_day=3, days=30, draft_id="rx-10x30")])


def case_15_mg_as_two_7_5_tablets() -> Case:
    patient = severe()
    return Case("15-mg-two-7.5-tablets-tid-30-days", patient,
                [patient.draft_medication(CYCLOBENZAPRINE_7_5, tablets=2, per_day=3, days=30, draft_id="rx-7-5x2")])


def case_er_30_twice_daily() -> Case:
    patient = severe()
    return Case("er-30-mg-twice-daily-30-days", patient,
                [patient.draft_medication(CYCLOBENZAPRINE_ER_30, dose_mg=30, per_day=2, days=30, draft_id="rx-er30-bid")])


def case_titration() -> Case:
    """5 mg three times daily for 7 days, then 15 mg three times daily for 14 days: two dosage steps."""
    patient = severe()
    order = patient.draft_medication(CYCLOBENZAPRINE_5, dose_mg=5, per_day=3, days=7, draft_id="rx-titration")
    order["dosageInstruction"][0]["sequence"] = 1
    order["dosageInstruction"][0]["text"] = "5 mg three times daily for 7 days"
    order["dosageInstruction"].append({
        "sequence": 2, "text": "then 15 mg three times daily for 14 days",
        "timing": {"repeat": {"boundsDuration": days(14), "frequency": 3, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": mg(15)}]})
    return Case("titration-5-then-15-mg", patient, [order])


def case_example_15() -> Case:
    """PROTOCOL §7 example 15: age 70, 10 mg three times daily for 10 days, 30 tablets."""
    patient = severe(age=70)
    return Case("example-15-age-70", patient,
                [patient.draft_medication(CYCLOBENZAPRINE_10, per_day=3, days=10, quantity=30, draft_id="rx-example-15")],
                low_dose=True)


def case_older_adult_every_limit() -> Case:
    """Age 70, 15 mg (two 7.5 mg tablets) three times daily for 30 days with a repeat: S6, S8 and S9 on one draft."""
    patient = severe(age=70)
    order = patient.draft_medication(CYCLOBENZAPRINE_7_5, tablets=2, per_day=3, days=30, supply_days=30, quantity=180,
                                     draft_id="rx-70-every-limit")
    order["dispenseRequest"]["numberOfRepeatsAllowed"] = 1
    return Case("age-70-15-mg-30-days-1-repeat", patient, [order], low_dose=True)


def case_mild_hepatic_er_15() -> Case:
    patient = severe()
    patient.condition(FATTY_LIVER)
    return Case("mild-hepatic-er-15-mg-30-days", patient,
                [patient.draft_medication(CYCLOBENZAPRINE_ER_15, dose_mg=15, per_day=1, days=30, draft_id="rx-er15-liver")],
                low_dose=True, no_extended_release=True)


def case_bounds_period_30_days() -> Case:
    """The course as a date-only boundsPeriod of 30 days, and texts that say "for 30 days"."""
    patient = severe()
    order = patient.draft_medication(CYCLOBENZAPRINE_10, per_day=3, days=None, draft_id="rx-period-30")
    dosage = order["dosageInstruction"][0]
    dosage["timing"]["repeat"]["boundsPeriod"] = {"start": day(0), "end": day(-29)}
    dosage["text"] = "10 mg by mouth three times daily for 30 days"
    dosage["patientInstruction"] = "Take 1 tablet three times a day for 30 days."
    return Case("bounds-period-30-days", patient, [order], notes={"old_days": 30})


def case_supply_with_repeats() -> Case:
    """No bounds: 30 days' supply (90 tablets) and 2 repeats, a 90-day course."""
    patient = severe()
    order = patient.draft_medication(CYCLOBENZAPRINE_5, per_day=3, days=None, supply_days=30, quantity=90, draft_id="rx-repeats")
    order["dispenseRequest"]["numberOfRepeatsAllowed"] = 2
    return Case("supply-30-days-2-repeats", patient, [order])


def case_supply_with_repeats_no_quantity() -> Case:
    """Only expectedSupplyDuration 30 days and 2 repeats: the course is 90 days and no quantity is given."""
    patient = severe()
    order = patient.draft_medication(CYCLOBENZAPRINE_10, per_day=3, days=None, supply_days=30, draft_id="rx-repeats-only")
    order["dispenseRequest"]["numberOfRepeatsAllowed"] = 2
    return Case("supply-30-days-2-repeats-no-quantity", patient, [order])


def case_timing_code_tid() -> Case:
    """Doses a day from ``timing.code`` TID only (no repeat.frequency), 10 mg for 30 days."""
    patient = severe()
    order = patient.draft_medication(CYCLOBENZAPRINE_10, dose_mg=10, days=30, draft_id="rx-code-tid")
    repeat = order["dosageInstruction"][0]["timing"]["repeat"]
    for name in ("frequency", "period", "periodUnit"):
        del repeat[name]
    order["dosageInstruction"][0]["timing"]["code"] = {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "TID", "display": "TID"}]}
    return Case("timing-code-tid-30-days", patient, [order])


def case_contained_medication() -> Case:
    patient = severe()
    return Case("contained-medication-20-mg-30-days", patient,
                [patient.draft_medication(CYCLOBENZAPRINE_10, tablets=2, per_day=3, days=30, shape="contained", draft_id="rx-contained")])


def case_as_needed() -> Case:
    """10 mg up to three times a day as needed, for 30 days."""
    patient = severe()
    order = patient.draft_medication(CYCLOBENZAPRINE_10, per_day=1, days=30, draft_id="rx-prn")
    dosage = order["dosageInstruction"][0]
    dosage["timing"]["repeat"]["frequencyMax"] = 3
    dosage["asNeededBoolean"] = True
    dosage["text"] = "10 mg by mouth up to three times a day as needed for muscle spasm, for 30 days"
    return Case("as-needed", patient, [order], notes={"old_days": 30})


def case_two_drafts() -> Case:
    patient = severe()
    return Case("two-drafts", patient, [
        patient.draft_medication(CYCLOBENZAPRINE_10, per_day=3, days=30, draft_id="rx-first"),
        patient.draft_medication(CYCLOBENZAPRINE_5, per_day=3, days=28, draft_id="rx-second"),
    ])


CASES: list[Callable[[], Case]] = [
    case_10_mg_tid_30_days, case_15_mg_as_two_7_5_tablets, case_er_30_twice_daily, case_titration, case_example_15,
    case_older_adult_every_limit, case_mild_hepatic_er_15, case_bounds_period_30_days, case_supply_with_repeats,
    case_supply_with_repeats_no_quantity, case_timing_code_tid, case_contained_medication, case_as_needed,
    case_two_drafts,
]
PARAMS = [pytest.param(make, hook, id=f"{make().name}-{hook}") for make in CASES for hook in ORDER_HOOKS]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("suggestions"))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def cyclobenzaprine_codes(app) -> set[tuple[str, str]]:
    return set(state_of(app).engine.content.terminology.codes(VS + "cyclobenzaprine"))


def send(app, client, hook: str, patient: Patient, drafts: list[dict]) -> list[dict]:
    """The cards of one call (order-select with every draft selected)."""
    return cards_of(client, hook, hook_body(app, hook, patient, drafts))


# ------------------------------------------------------------------------------------------------ reading orders


def suggestions_of(card: dict) -> list[dict]:
    return card.get("suggestions") or []


def actions_of(cards: Iterable[dict]) -> list[dict]:
    return [a for c in cards for s in suggestions_of(c) for a in s["actions"]]


def key(resource: dict) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def medication_coding(order: dict) -> list[dict]:
    """The codings of the drug: medicationCodeableConcept, or the contained Medication it references."""
    if "medicationCodeableConcept" in order:
        return order["medicationCodeableConcept"].get("coding") or []
    reference = (order.get("medicationReference") or {}).get("reference", "")
    if reference.startswith("#"):
        found = next((r for r in order.get("contained") or [] if r.get("id") == reference[1:]), None)
        return ((found or {}).get("code") or {}).get("coding") or []
    return []


def product(order: dict) -> tuple[float, bool]:
    """(mg per unit, extended release) of the ordered product."""
    for c in medication_coding(order):
        if c.get("system") == RXNORM and c.get("code") in STRENGTH:
            return STRENGTH[c["code"]]
    raise AssertionError(f"unknown cyclobenzaprine product in {key(order)}: {medication_coding(order)}")


def dose_mg(dosage: dict, order: dict) -> float:
    [dose_and_rate] = dosage["doseAndRate"]
    quantity = dose_and_rate.get("doseQuantity") or (dose_and_rate.get("doseRange") or {}).get("high")
    assert quantity, f"no dose in {dosage}"
    if quantity.get("code") == "mg" or quantity.get("unit") == "mg":
        return float(quantity["value"])
    assert quantity.get("code") in ("{tbl}", "{tablet}", "{pill}") or quantity.get("unit") in ("tablet", "tablets", "pill"), quantity
    return float(quantity["value"]) * product(order)[0]


def doses_a_day(dosage: dict) -> float:
    timing = dosage.get("timing") or {}
    repeat = timing.get("repeat") or {}
    if "frequency" in repeat or "frequencyMax" in repeat:
        frequency = repeat.get("frequencyMax", repeat.get("frequency", 1))
        period = repeat.get("period", 1) * DAYS_PER_UNIT[repeat.get("periodUnit", "d")]
        return frequency / period
    if repeat.get("timeOfDay"):
        return len(repeat["timeOfDay"])
    if repeat.get("when"):
        return len(repeat["when"])
    codes = [c.get("code") for c in (timing.get("code") or {}).get("coding") or []]
    for code in codes:
        if code in TIMING_CODES:
            return TIMING_CODES[code]
    raise AssertionError(f"doses a day unknown in {dosage}")


def step_days(dosage: dict) -> float | None:
    """The length of one dosage step: boundsDuration, or the whole days of boundsPeriod (date-only end inclusive)."""
    repeat = ((dosage.get("timing") or {}).get("repeat")) or {}
    if "boundsDuration" in repeat:
        bounds = repeat["boundsDuration"]
        return bounds["value"] * DAYS_PER_UNIT[bounds.get("code", "d")]
    if "boundsPeriod" in repeat and repeat["boundsPeriod"].get("start") and repeat["boundsPeriod"].get("end"):
        start = date.fromisoformat(repeat["boundsPeriod"]["start"][:10])
        end = date.fromisoformat(repeat["boundsPeriod"]["end"][:10])
        return (end - start).days + (1 if len(repeat["boundsPeriod"]["end"]) == 10 else 0)
    return None


def repeats(order: dict) -> int:
    return int((order.get("dispenseRequest") or {}).get("numberOfRepeatsAllowed", 0))


def tablets_a_day(order: dict) -> float:
    strength = product(order)[0]
    return max(dose_mg(d, order) / strength * doses_a_day(d) for d in order["dosageInstruction"])


def course_days(order: dict) -> float:
    """PROTOCOL §4a: the largest of the bounds (steps with different sequence numbers follow each other, so their
    bounds add up), the supply times fills, and the quantity times fills per tablets a day."""
    fills = 1 + repeats(order)
    steps = order["dosageInstruction"]
    lengths = [n for n in (step_days(d) for d in steps) if n is not None]
    first_of_sequence = {}
    for d in steps:
        if "sequence" in d and d["sequence"] not in first_of_sequence:
            first_of_sequence[d["sequence"]] = step_days(d) or 0
    if first_of_sequence:
        lengths.append(sum(first_of_sequence.values()))
    dispense = order.get("dispenseRequest") or {}
    if dispense.get("expectedSupplyDuration"):
        supply = dispense["expectedSupplyDuration"]
        lengths.append(supply["value"] * DAYS_PER_UNIT[supply.get("code", "d")] * fills)
    if dispense.get("quantity"):
        lengths.append(dispense["quantity"]["value"] * fills / tablets_a_day(order))
    assert lengths, f"{key(order)} has no course length"
    return max(lengths)


def totals_mg(order: dict) -> list[float]:
    """Every well-defined total in mg: as scheduled (each step bounded; an unbounded single step runs over the supply
    times the fills), and as dispensed (quantity times fills)."""
    out = []
    steps = [(dose_mg(d, order), doses_a_day(d), step_days(d)) for d in order["dosageInstruction"]]
    supply = (order.get("dispenseRequest") or {}).get("expectedSupplyDuration")
    if len(steps) == 1 and steps[0][2] is None and supply:
        steps = [(steps[0][0], steps[0][1], supply["value"] * DAYS_PER_UNIT[supply.get("code", "d")] * (1 + repeats(order)))]
    if all(length is not None for _, _, length in steps):
        out.append(sum(dose * per_day * length for dose, per_day, length in steps))
    quantity = (order.get("dispenseRequest") or {}).get("quantity")
    if quantity:
        per_unit = 1.0 if quantity.get("code") == "mg" else product(order)[0]
        out.append(quantity["value"] * per_unit * (1 + repeats(order)))
    return out


def number(value: float) -> str:
    return f"{value:g}"


def texts(order: dict) -> str:
    return " ".join(str(d.get(k, "")) for d in order["dosageInstruction"] for k in ("text", "patientInstruction"))


# ------------------------------------------------------------------------------------------------ what a client does


def apply_suggestions(drafts: list[dict], suggestions: Iterable[dict]) -> list[dict]:
    """The drafts after a CDS client applies the suggestions: deletes, then creates, then updates.

    An update replaces the draft with the same resource type and id; an update of a draft that was deleted
    has nothing left to replace. Created resources get an id of their own, as a client would give them.
    """
    current = {key(d): copy.deepcopy(d) for d in drafts}
    actions = [a for s in suggestions for a in s["actions"]]
    for action in actions:
        if action["type"] == "delete":
            current.pop(action["resourceId"], None)
    for n, action in enumerate(a for a in actions if a["type"] == "create"):
        resource = copy.deepcopy(action["resource"])
        resource["id"] = f"created-{n}"
        current[key(resource)] = resource
    for action in actions:
        if action["type"] == "update" and key(action["resource"]) in current:
            current[key(action["resource"])] = copy.deepcopy(action["resource"])
    return list(current.values())


def is_cyclobenzaprine(resource: dict, codes: set[tuple[str, str]]) -> bool:
    return resource.get("resourceType") == "MedicationRequest" and any(
        (c.get("system"), c.get("code")) in codes for c in medication_coding(resource))


def compliance_problems(order: dict, case: Case) -> list[str]:
    """This file's own reading of a cyclobenzaprine order against §4 and §4a (what a corrected order must be)."""
    problems = []
    if len(order.get("dosageInstruction") or []) != 1:
        return [f"{len(order.get('dosageInstruction') or [])} dosage steps, expected one"]
    [dosage] = order["dosageInstruction"]
    extended = product(order)[1]
    dose, per_day = dose_mg(dosage, order), doses_a_day(dosage)
    if extended:
        if case.no_extended_release:
            problems.append("extended release for a patient with hepatic impairment")
        if per_day > 1:
            problems.append(f"extended release {number(per_day)} times a day (once a day at most)")
        if dose * per_day > 30:
            problems.append(f"extended release {number(dose * per_day)} mg a day (30 at most)")
    else:
        limit = 5 if case.low_dose else 10
        if dose > limit:
            problems.append(f"{number(dose)} mg a dose (at most {limit})")
        if per_day > 3:
            problems.append(f"{number(per_day)} doses a day (at most 3)")
        if dose * per_day > 3 * limit:
            problems.append(f"{number(dose * per_day)} mg a day (at most {3 * limit})")
    repeat = dosage["timing"]["repeat"]
    if "boundsDuration" not in repeat:
        problems.append("no boundsDuration")
    extra = sorted(k for k in repeat if k.startswith("bounds") and k != "boundsDuration")
    if extra:
        problems.append(f"{extra} beside boundsDuration")
    if course_days(order) > 21:
        problems.append(f"course of {number(course_days(order))} days (21 at most)")
    if repeats(order) != 0:
        problems.append(f"numberOfRepeatsAllowed {repeats(order)}")
    return problems


def updates_by_draft(cards: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for action in actions_of(cards):
        if action["type"] == "update":
            found.setdefault(key(action["resource"]), []).append(action["resource"])
    return found


def corrected_orders(cards: list[dict]) -> dict[str, dict]:
    """The corrected order of each draft (the first update of it; they are all the same, see below)."""
    return {k: v[0] for k, v in updates_by_draft(cards).items()}


# ------------------------------------------------------------------------------------------------ 1. uuids and isRecommended


@pytest.mark.parametrize("make, hook", PARAMS)
def test_every_suggestion_has_a_unique_uuid_and_the_response_follows_the_card_rules(app, client, make, hook):
    """Feedback names the accepted suggestion by its uuid, so each needs its own (CDS Hooks 2.0, PROTOCOL §4a)."""
    case = make()
    cards = send(app, client, hook, case.patient, case.drafts)
    assert cards, "every case has a draft outside the limits"
    ids = [s.get("uuid") for c in cards for s in suggestions_of(c)]
    assert ids and all(isinstance(i, str) and re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert response_problems({"cards": cards}) == []


@pytest.mark.parametrize("make, hook", PARAMS)
def test_at_most_one_suggestion_is_recommended_on_a_card_of_alternatives(app, client, make, hook):
    """``isRecommended`` marks the protocol's choice; on an ``at-most-one`` card there can only be one such choice."""
    case = make()
    for card in send(app, client, hook, case.patient, case.drafts):
        if card.get("selectionBehavior") == "at-most-one":
            recommended = [s for s in suggestions_of(card) if s.get("isRecommended") is True]
            assert len(recommended) <= 1, (topic(card), [s["label"] for s in recommended])
        for suggestion in suggestions_of(card):
            assert suggestion.get("isRecommended", False) in (True, False), suggestion.get("isRecommended")


def test_the_service_marks_the_recommended_suggestion(app, client):
    """The fix of a draft is what the protocol recommends: the S8 card's update carries ``isRecommended: true``."""
    case = case_10_mg_tid_30_days()
    card = by_topic(send(app, client, "order-sign", case.patient, case.drafts), "S8")
    assert [s.get("isRecommended") for s in suggestions_of(card)] == [True]


# ------------------------------------------------------------------------------------------------ 2. one corrected order


@pytest.mark.parametrize("make, hook", PARAMS)
def test_every_update_of_a_draft_carries_the_same_corrected_order(app, client, make, hook):
    """Accepting the S8 fix and the S9 fix (or S5/S6) must give one order, not two that undo each other."""
    case = make()
    cards = send(app, client, hook, case.patient, case.drafts)
    drafts = {key(d) for d in case.drafts}
    updates = updates_by_draft(cards)
    assert updates, f"no update suggestion for {sorted(drafts)}; topics {topics(cards)}"
    for target, resources in updates.items():
        assert target in drafts, f"an update of {target}, which is not a draft of the request"
        first = json.dumps(resources[0], sort_keys=True)
        assert all(json.dumps(r, sort_keys=True) == first for r in resources), f"{len(resources)} different corrections of {target}"


def test_one_draft_breaking_several_rules_gets_the_same_correction_on_each_card(app, client):
    """Age 70, 15 mg three times daily for 30 days with a repeat: the S6, S8 and S9 cards each offer the one corrected
    order (so the comparison above is not vacuous: one draft, three updates)."""
    case = case_older_adult_every_limit()
    cards = send(app, client, "order-sign", case.patient, case.drafts)
    assert {"S6", "S8", "S9"} <= set(topics(cards)), topics(cards)
    [(target, resources)] = updates_by_draft(cards).items()
    assert target == "MedicationRequest/rx-70-every-limit" and len(resources) == 3
    assert len({json.dumps(r, sort_keys=True) for r in resources}) == 1


# ------------------------------------------------------------------------------------------------ 3. applied, then sent again


@pytest.mark.parametrize("make, hook", PARAMS)
def test_accepting_every_suggestion_leaves_drafts_within_the_limits(app, client, make, hook, cyclobenzaprine_codes):
    """All suggestions accepted, the drafts sent again to the same hook: no S8, S9 or unreadable card, and the
    remaining cyclobenzaprine drafts are within the limits by this file's own reading."""
    case = make()
    cards = send(app, client, hook, case.patient, case.drafts)
    after = apply_suggestions(case.drafts, [s for c in cards for s in suggestions_of(c)])
    orders = [r for r in after if is_cyclobenzaprine(r, cyclobenzaprine_codes)]
    assert orders, "a cyclobenzaprine order should remain (none of these patients has a reason to remove it)"
    for order in orders:
        assert compliance_problems(order, case) == [], key(order)
    again = send(app, client, hook, case.patient, after)
    assert not FIXED_TOPICS & set(topics(again)), [(topic(c), c["summary"]) for c in again if topic(c) in FIXED_TOPICS]


@pytest.mark.parametrize("make, hook", PARAMS)
def test_each_corrected_order_alone_is_within_the_limits(app, client, make, hook):
    """Accepting one suggestion is enough: each corrected order, sent on its own, gets no S8, S9 or unreadable card."""
    case = make()
    cards = send(app, client, hook, case.patient, case.drafts)
    for target, order in corrected_orders(cards).items():
        assert compliance_problems(order, case) == [], target
        again = send(app, client, hook, case.patient, [order])
        assert not FIXED_TOPICS & set(topics(again)), (target, [(topic(c), c["summary"]) for c in again])


# ------------------------------------------------------------------------------------------------ 4. never more than the draft


@pytest.mark.parametrize("make, hook", PARAMS)
def test_a_correction_never_has_a_longer_course_more_repeats_or_more_milligrams(app, client, make, hook):
    """§4a: a corrected order never has a longer course, more repeats or more mg in total than the draft.

    The draft's total is the smallest of its well-defined totals (what it could ever give), the correction's
    the largest of its own (what it could ever give), so the comparison holds on every reading.
    """
    case = make()
    drafts = {key(d): d for d in case.drafts}
    for target, order in corrected_orders(send(app, client, hook, case.patient, case.drafts)).items():
        draft = drafts[target]
        assert course_days(order) <= course_days(draft), (target, course_days(order), course_days(draft))
        assert repeats(order) <= repeats(draft)
        draft_totals, order_totals = totals_mg(draft), totals_mg(order)
        assert order_totals, f"the correction of {target} has no well-defined total"
        if draft_totals:
            assert max(order_totals) <= min(draft_totals), (target, order_totals, draft_totals)


# ------------------------------------------------------------------------------------------------ 5. text follows structure


def old_lengths(draft: dict) -> set[int]:
    """Course lengths in days that the draft states (its bounds and its supply), to be gone from the correction."""
    found = {int(n) for n in (step_days(d) for d in draft["dosageInstruction"]) if n is not None}
    supply = (draft.get("dispenseRequest") or {}).get("expectedSupplyDuration")
    if supply:
        found.add(int(supply["value"]))
    found |= {int(n) for n in re.findall(r"(\d+)\s*days?", texts(draft))}
    return found


def instruction_problems(order: dict, draft: dict, case: Case) -> list[str]:
    """Where the written instructions of a corrected order disagree with its structure."""
    problems = []
    [dosage] = order["dosageInstruction"]
    dose, per_day = dose_mg(dosage, order), doses_a_day(dosage)
    length = int(step_days(dosage))
    text, patient_text = dosage.get("text") or "", dosage.get("patientInstruction") or ""
    if not re.search(rf"\b{re.escape(number(dose))}\s*mg\b", text):
        problems.append(f"text does not give the dose {number(dose)} mg: {text!r}")
    if per_day in FREQUENCY_WORDS and not re.search(FREQUENCY_WORDS[per_day], text, re.I):
        problems.append(f"text does not say {number(per_day)} times a day: {text!r}")
    if not re.search(rf"\b{length}\s*days\b", text):
        problems.append(f"text does not give the course of {length} days: {text!r}")
    if not patient_text:
        problems.append("no patientInstruction")
    elif not re.search(rf"\b{length}\s*days\b", patient_text):
        problems.append(f"patientInstruction does not give the {length} days: {patient_text!r}")
    if per_day in FREQUENCY_WORDS and patient_text and not re.search(FREQUENCY_WORDS[per_day], patient_text, re.I):
        problems.append(f"patientInstruction does not say {number(per_day)} times a day: {patient_text!r}")
    tablets = re.search(r"\btake\s+(half|one|two|three|four|\d)\s+(tablet|capsule)s?\b", patient_text, re.I)
    if tablets and NUMBER_WORDS[tablets.group(1).lower()] * product(order)[0] != dose:
        problems.append(f"patientInstruction says {tablets.group(0)!r} of {number(product(order)[0])} mg for a {number(dose)} mg dose")
    for old in old_lengths(draft) - {length}:
        for name, value in (("text", text), ("patientInstruction", patient_text)):
            if re.search(rf"\b{old}[\s-]*days?\b", value):
                problems.append(f"{name} still says {old} days beside a {length}-day course: {value!r}")
    if case.low_dose:
        for name, value in (("text", text), ("patientInstruction", patient_text)):
            if INCREASE.search(value):
                problems.append(f"{name} speaks of a higher dose for an S5/S6 patient: {value!r}")
    as_needed = dosage.get("asNeededBoolean") is True or "asNeededCodeableConcept" in dosage
    if as_needed and not re.search(r"as needed|when needed|if needed", text, re.I):
        problems.append(f"an as-needed order whose text does not say so: {text!r}")
    return problems


@pytest.mark.parametrize("make, hook", PARAMS)
def test_the_written_instructions_follow_the_corrected_structure(app, client, make, hook):
    """§4a: a suggestion that changes the dose, frequency or course rewrites text and patientInstruction from the
    corrected structure (dose in mg, course days, no old length left, no "increase" for S5/S6)."""
    case = make()
    drafts = {key(d): d for d in case.drafts}
    corrected = corrected_orders(send(app, client, hook, case.patient, case.drafts))
    assert corrected
    for target, order in corrected.items():
        assert instruction_problems(order, drafts[target], case) == [], target


@pytest.mark.parametrize("hook", ORDER_HOOKS)
def test_example_15_replacement_is_5_mg_three_times_daily_for_at_most_10_days(app, client, hook):
    """§7 example 15: age 70, 10 mg TID for 10 days (30 tablets) → 5 mg TID for at most 10 days, 15 mg a day,
    150 mg in all, and the text says exactly that."""
    case = case_example_15()
    cards = send(app, client, hook, case.patient, case.drafts)
    card = by_topic(cards, "S6")
    [update] = [a for s in suggestions_of(card) for a in s["actions"] if a["type"] == "update"]
    order = update["resource"]
    assert order["id"] == "rx-example-15" and order["status"] == "draft"
    [dosage] = order["dosageInstruction"]
    assert dose_mg(dosage, order) == 5 and doses_a_day(dosage) == 3
    assert product(order) == (5.0, False), "5 mg a dose as one immediate-release 5 mg tablet"
    assert course_days(order) <= 10
    assert dose_mg(dosage, order) * doses_a_day(dosage) <= 15
    assert max(totals_mg(order)) <= 150
    limit = dosage.get("maxDosePerPeriod")
    if limit:
        assert limit["numerator"]["value"] / limit["denominator"]["value"] <= 15, limit
    text = dosage.get("text", "")
    for phrase in (r"\b5 mg\b", r"three times (daily|a day)", r"\b10 days\b", r"\b15 mg a day\b", r"\b150 mg\b"):
        assert re.search(phrase, text), (phrase, text)
    assert not INCREASE.search(text) and not INCREASE.search(dosage.get("patientInstruction", ""))


def test_the_course_by_bounds_period_is_replaced_not_kept_beside_21_days(app, client):
    """A boundsPeriod of 30 days and texts "for 30 days": the correction has boundsDuration 21 days only, and no 30."""
    case = case_bounds_period_30_days()
    [order] = corrected_orders(send(app, client, "order-sign", case.patient, case.drafts)).values()
    repeat = order["dosageInstruction"][0]["timing"]["repeat"]
    assert "boundsPeriod" not in repeat and (repeat["boundsDuration"]["value"], repeat["boundsDuration"]["code"]) == (21, "d")
    assert "30 day" not in texts(order)


def test_the_as_needed_order_stays_as_needed(app, client):
    """Correcting the length of an as-needed order must not turn it into a scheduled one (more tablets taken)."""
    case = case_as_needed()
    [order] = corrected_orders(send(app, client, "order-sign", case.patient, case.drafts)).values()
    [dosage] = order["dosageInstruction"]
    assert dosage.get("asNeededBoolean") is True, dosage
    assert re.search(r"as needed", dosage.get("text", ""), re.I), dosage.get("text")


def test_two_drafts_each_corrected_and_only_the_later_one_removed_as_a_duplicate(app, client):
    """§4a: two cyclobenzaprine drafts are each checked; the later one also gets a duplicate warning (S10) whose
    suggestion removes that one only."""
    case = case_two_drafts()
    cards = send(app, client, "order-sign", case.patient, case.drafts)
    duplicate = by_topic(cards, "S10")
    deletes = [a["resourceId"] for s in suggestions_of(duplicate) for a in s["actions"] if a["type"] == "delete"]
    assert deletes == ["MedicationRequest/rx-second"]
    assert [a for a in actions_of(cards) if a["type"] == "delete"] == [
        a for s in suggestions_of(duplicate) for a in s["actions"] if a["type"] == "delete"], "nothing else removes a draft"
    assert "MedicationRequest/rx-first" in corrected_orders(cards), "the first draft is corrected, not removed"
    course_cards = [c for c in cards if topic(c) == "S8"]
    assert len(course_cards) == 2, "each draft is checked: both run longer than 21 days"


def test_the_later_of_two_drafts_also_gets_its_course_correction(app, client):
    """§4 S8 and §4a "each is checked": the later draft (5 mg TID for 28 days) gets an S8 card with its correction to
    21 days, beside the S10 card that offers to remove it (a clinician who overrides S10 still has the fix)."""
    case = case_two_drafts()
    cards = send(app, client, "order-sign", case.patient, case.drafts)
    course_cards = [c for c in cards if topic(c) == "S8"]
    assert all(suggestions_of(c) for c in course_cards), [c["detail"].split("\n")[0] for c in course_cards if not suggestions_of(c)]
    assert "MedicationRequest/rx-second" in corrected_orders(cards)


def test_the_contained_medication_stays_resolvable(app, client):
    """A draft naming its drug by a contained Medication: the correction still names a cyclobenzaprine product, and
    every contained resource is referenced and every local reference resolves (dom-3)."""
    case = case_contained_medication()
    [order] = corrected_orders(send(app, client, "order-sign", case.patient, case.drafts)).values()
    assert ("medicationCodeableConcept" in order) != ("medicationReference" in order)
    assert product(order)[0] in (5.0, 10.0)
    contained_ids = {r["id"] for r in order.get("contained") or []}
    local = set(re.findall(r'"reference":\s*"#([^"]+)"', json.dumps(order)))
    assert local <= contained_ids, (local, contained_ids)
    assert contained_ids <= local, f"contained resources {contained_ids - local} are referenced by nothing"


# ------------------------------------------------------------------------------------------------ 6. valid R4


@pytest.mark.parametrize("make, hook", PARAMS)
def test_every_suggested_resource_validates_with_the_r4b_models(app, client, make, hook):
    case = make()
    for action in actions_of(send(app, client, hook, case.patient, case.drafts)):
        if "resource" in action:
            assert r4b_problems(action["resource"]) == [], action["description"]
            assert action["resource"].get("subject") == case.patient.ref


def checker_errors(resources: list[dict], tmp_path) -> tuple[int, list]:
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}", "resource": r} for n, r in enumerate(resources)]}
    code, report = fhir_check(data=bundle, tmp_path=tmp_path)
    errors = [(item["target"], issue.get("path"), issue.get("message")) for f in report.get("files", []) for item in f["items"]
              for issue in item["issues"] if issue.get("severity") == "error"]
    return code, errors


def test_every_suggested_resource_passes_the_independent_r4_checker(app, client, tmp_path):
    """All the suggested resources of every case and hook, plus those of the patient-view cases, in one Bundle
    checked by ../shared/tools/fhir-check (skipped, saying why, when it is not installed)."""
    resources = []
    for make in CASES:
        case = make()
        for hook in ORDER_HOOKS:
            resources += [a["resource"] for a in actions_of(send(app, client, hook, case.patient, case.drafts)) if "resource" in a]
    for make in (on_cyclobenzaprine_for_25_days_phase_3, on_cyclobenzaprine_for_25_days_phase_4, severe_day_1):
        resources += [a["resource"] for a in actions_of(send(app, client, "patient-view", make(), [])) if "resource" in a]
    assert resources
    code, errors = checker_errors(resources, tmp_path)
    assert errors == [] and code == 0


# ------------------------------------------------------------------------------------------------ 7. one change, one suggestion


def on_cyclobenzaprine_for_25_days_phase_3() -> Patient:
    patient = Patient(45, patient_id="pat-s11-3")
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25)
    return patient


def on_cyclobenzaprine_for_25_days_phase_4() -> Patient:
    patient = Patient(45, patient_id="pat-s11-4")
    patient.spasm(days_ago=30)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25)
    return patient


def severe_day_1() -> Patient:
    return severe()


@pytest.mark.parametrize("make", [on_cyclobenzaprine_for_25_days_phase_3, on_cyclobenzaprine_for_25_days_phase_4])
def test_the_order_past_three_weeks_is_stopped_by_one_suggestion_on_the_s11_card(app, client, make):
    """§4a "one change, one suggestion": the stop is offered once, on the S11 card; the plan card lists it without
    a second suggestion."""
    patient = make()
    order = next(r for r in patient.resources if r["resourceType"] == "MedicationRequest")
    cards = send(app, client, "patient-view", patient, [])
    stops = [(topic(c), s) for c in cards for s in suggestions_of(c)
             if any(a["type"] == "update" and key(a["resource"]) == key(order) for a in s["actions"])]
    assert [t for t, _ in stops] == ["S11"], f"suggestions that change {key(order)} on cards {[t for t, _ in stops]}"
    [(_, stop)] = stops
    [update] = stop["actions"]
    assert update["resource"]["status"] in ("stopped", "completed")
    assert update["resource"]["medicationCodeableConcept"] == order["medicationCodeableConcept"]
    plan = by_topic(cards, "phase-plan")
    assert not [a for s in suggestions_of(plan) for a in s["actions"]
                if a["type"] in ("update", "delete") or key(order) in json.dumps(a.get("resource", {}))]


def test_the_proposal_creates_the_only_cyclobenzaprine_order(app, client, cyclobenzaprine_codes):
    """§4a "one order, one suggestion": on day 1 of a severe spasm, only the proposal card creates cyclobenzaprine;
    the plan card's CarePlan lists it without a MedicationRequest of its own."""
    cards = send(app, client, "patient-view", severe_day_1(), [])

    def creates_cyclobenzaprine(suggestion: dict) -> bool:
        for action in suggestion["actions"]:
            if action["type"] != "create":
                continue
            resource = action["resource"]
            if any(is_cyclobenzaprine(r, cyclobenzaprine_codes) for r in [resource, *(resource.get("contained") or [])]):
                return True
        return False

    creating = [topic(c) for c in cards for s in suggestions_of(c) if creates_cyclobenzaprine(s)]
    assert creating == ["cyclobenzaprine"], creating
    plan = by_topic(cards, "phase-plan")
    [careplan] = [a["resource"] for s in suggestions_of(plan) for a in s["actions"]
                  if a["type"] == "create" and a["resource"]["resourceType"] == "CarePlan"]
    assert [r for r in careplan.get("contained") or [] if r["resourceType"] == "MedicationRequest"] == []


# ------------------------------------------------------------------------------------------------ 8. nothing to override


def withheld_patient(finding: str) -> Patient:
    """Severe spasm on day 1 and one reason not to propose cyclobenzaprine."""
    patient = severe(age=72 if finding == "S6" else 45)
    if finding == "S1":
        patient.medication(PHENELZINE)
    elif finding == "S2":
        patient.condition(HEART_FAILURE)
    elif finding == "S3":
        patient.allergy(TRICYCLIC_ALLERGY)
    elif finding == "S4":
        patient.condition(CIRRHOSIS)
    elif finding == "S10":
        patient.medication(CYCLOBENZAPRINE_5, started_days_ago=1)
    return patient


@pytest.mark.parametrize("finding", sorted(WITHHELD_TOPICS))
def test_a_card_that_only_informs_has_no_override_reasons(app, client, finding):
    """§4a: a withheld-proposal card (for example phenelzine, S1) has no suggestion and so nothing to override."""
    cards = send(app, client, "patient-view", withheld_patient(finding), [])
    card = by_topic(cards, finding)
    assert not suggestions_of(card), "a withheld proposal is information only"
    assert "overrideReasons" not in card, (finding, card["summary"])
    for other in cards:
        if not suggestions_of(other) and topic(other) in WITHHELD_TOPICS:
            assert "overrideReasons" not in other, (topic(other), other["summary"])


@pytest.mark.parametrize("make, hook", PARAMS)
def test_warning_cards_with_suggestions_offer_override_reasons(app, client, make, hook):
    """A warning that fixes or removes a draft can be overridden, so it lists reasons; no card lists an empty set."""
    case = make()
    for card in send(app, client, hook, case.patient, case.drafts):
        if suggestions_of(card) and card["indicator"] in ("warning", "critical"):
            assert card.get("overrideReasons"), (topic(card), card["summary"])
        if "overrideReasons" in card:
            assert card["overrideReasons"], topic(card)


def test_no_case_is_silently_clean():
    """Guard on the cases themselves: every draft here breaks a limit by this file's reading, so a response
    without cards, or a draft left without a correction, is a finding and not a vacuous pass."""
    for make in CASES:
        case = make()
        for draft in case.drafts:
            assert compliance_problems(draft, case), (case.name, key(draft))

