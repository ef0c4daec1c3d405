"""The cards of every worked example (PROTOCOL.md §7) through the HTTP API, checked field by field.

Each example is posted to the service of its hook, with the patient's record as a complete prefetch.
Every response must follow the CDS Hooks 2.0 card rules (uuid, summary under 140 characters, indicator,
source with url and topic, markdown detail with the evidence, links, override reasons on warning and
critical cards, selectionBehavior with suggestions, well-formed actions, no empty values) and carry what
the protocol says the example must show. Suggested resources must be valid FHIR R4 (fhir.resources R4B).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from service import state_of
from tests.patients import (
    CIRRHOSIS,
    CPT,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_10,
    CYCLOBENZAPRINE_ER_30,
    LUMBAR_ORTHOSIS,
    PHENELZINE,
    RXNORM,
    SERTRALINE,
    TENS_DEVICE,
    TRACTION,
    TRAMADOL,
    Patient,
)
from tests.service_helpers import (
    SERVICES,
    by_topic,
    call,
    cards_of,
    hook_body,
    make_app,
    r4b_problems,
    response_problems,
    topics,
    without_uuids,
)

VS = "http://example.org/fhir/back-spasm-cds/ValueSet/"
TENS_CPT = (CPT, "97014", "Application of a modality to 1 or more areas; electrical stimulation (unattended)")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("cards"))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


# -- the examples ---------------------------------------------------------------------------------------------------


def severe(age: int = 45, hours_ago: float = 20) -> Patient:
    patient = Patient(age)
    patient.spasm(hours_ago)
    return patient


def example_1():
    return "patient-view", severe(), []


def example_2():
    patient = severe()
    patient.medication(PHENELZINE, kind="statement", status="stopped", started_days_ago=60, ended_days_ago=7)
    return "patient-view", patient, []


def example_2_draft():
    """Example 2's patient with cyclobenzaprine drafted: S1 on a draft is critical."""
    hook, patient, _ = example_2()
    return "order-sign", patient, [patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-maoi")]


def example_3():
    return "patient-view", severe(age=72, hours_ago=30), []


def example_4():
    patient = Patient(45)
    patient.spasm(days_ago=5, severity=None)
    return "patient-view", patient, []


def example_5():
    patient = Patient(45)
    patient.spasm(days_ago=14)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=16)
    return "patient-view", patient, []


def example_6():
    patient = Patient(45)
    patient.spasm(days_ago=40)
    return "patient-view", patient, []


def example_7():
    patient = Patient(45)
    patient.spasm(days_ago=26)
    patient.medication(CYCLOBENZAPRINE_5, started_days_ago=25)
    return "patient-view", patient, []


def example_8():
    patient = severe()
    return "order-sign", patient, [patient.draft_service(TENS_CPT, draft_id="tens-1")]


def example_8_device():
    patient = severe()
    return "order-sign", patient, [patient.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="tens-2")]


def example_9():
    patient = severe()
    return "order-sign", patient, [patient.draft_medication(CYCLOBENZAPRINE_10, per_day=3, days=30, draft_id="rx-30")]


def example_10():
    patient = Patient(45)
    patient.pain(8)
    return "patient-view", patient, []


def example_10_order():
    patient = Patient(45)
    patient.pain(8)
    return "order-sign", patient, [patient.draft_service(TENS_CPT, draft_id="tens-3")]


def example_11():
    patient = severe()
    patient.condition(CIRRHOSIS)
    return "patient-view", patient, []


def example_11_draft():
    hook, patient, _ = example_11()
    return "order-sign", patient, [patient.draft_medication(CYCLOBENZAPRINE_5, draft_id="rx-1")]


def example_12():
    patient = severe()
    patient.medication(SERTRALINE)
    return "patient-view", patient, []


def under_18():
    return "patient-view", severe(age=17), []


#: example → the cards it must give: topic → allowed indicators.
EXPECTED: dict[Callable, dict[str, tuple[str, ...]]] = {
    example_1: {"phase-plan": ("info",), "cyclobenzaprine": ("info",)},
    example_2: {"phase-plan": ("info",), "S1": ("warning", "critical")},
    example_2_draft: {"S1": ("critical",)},
    example_3: {"phase-plan": ("info",), "S6": ("info", "warning")},
    example_4: {"phase-plan": ("info",)},
    example_5: {"phase-plan": ("info",)},
    example_6: {"phase-plan": ("info",)},
    example_7: {"phase-plan": ("info",), "S11": ("warning",)},
    example_8: {"tens": ("info",)},
    example_8_device: {"tens": ("info",)},
    example_9: {"S8": ("warning",)},
    example_10: {},
    example_10_order: {},
    example_11: {"phase-plan": ("info",), "S4": ("warning", "critical")},
    example_11_draft: {"S4": ("warning",)},
    example_12: {"phase-plan": ("info",), "cyclobenzaprine": ("warning",)},
    under_18: {},
}
EXAMPLES = list(EXPECTED)

LONG_NAME = (RXNORM, SERTRALINE[1], SERTRALINE[2] + " as one extraordinarily long product description that some record systems send for"
             " a branded pack [Zoloft] 30 count bottle")


def long_drug_name():
    """A serotonergic drug whose display alone is longer than a card summary may be, with a CNS depressant."""
    patient = severe()
    patient.medication(LONG_NAME)
    patient.medication(TRAMADOL)
    return "patient-view", patient, []


def onset_missing():
    patient = Patient(45)
    patient.spasm(onset="none")
    return "patient-view", patient, []


def onset_in_future():
    patient = Patient(45)
    patient.spasm(hours_ago=-48)
    return "patient-view", patient, []


def many_draft_problems():
    """One extended-release draft breaking several rules, a serotonergic co-medication, and three unsupported orders."""
    patient = severe()
    patient.medication(LONG_NAME)
    return "order-sign", patient, [
        patient.draft_medication(CYCLOBENZAPRINE_ER_30, dose_mg=30, per_day=2, days=30, draft_id="rx-er"),
        patient.draft_service(LUMBAR_ORTHOSIS, resource_type="DeviceRequest", draft_id="brace-1"),
        patient.draft_service(TRACTION, draft_id="traction-1"),
        patient.draft_service(TENS_CPT, draft_id="tens-4"),
    ]


#: situations beyond the worked examples, for the card rules only.
MORE = [long_drug_name, onset_missing, onset_in_future, many_draft_problems]


def run(app, client, example: Callable, hook_override: str | None = None) -> tuple[dict, list[dict]]:
    hook, patient, drafts = example()
    hook = hook_override or hook
    body = hook_body(app, hook, patient, drafts)
    answer = call(client, hook, body)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:1000]
    assert answer.mimetype == "application/json"
    return answer.get_json(), answer.get_json()["cards"]


def suggestions_of(card: dict) -> list[dict]:
    return card.get("suggestions") or []


def actions_of(card: dict) -> list[dict]:
    return [a for s in suggestions_of(card) for a in s["actions"]]


def careplan_of(card: dict) -> dict:
    [careplan] = [a["resource"] for a in actions_of(card) if a["type"] == "create" and a["resource"]["resourceType"] == "CarePlan"]
    return careplan


def contained(careplan: dict, rtype: str) -> list[dict]:
    return [r for r in careplan.get("contained") or [] if r["resourceType"] == rtype]


def in_valueset(app, concept: dict, name: str) -> bool:
    codes = {(c.get("system"), c.get("code")) for c in concept.get("coding") or []}
    return bool(codes & state_of(app).engine.content.terminology.codes(VS + name))


def rxnorm_codes(resource: dict) -> set[str]:
    return {c["code"] for c in (resource.get("medicationCodeableConcept") or {}).get("coding") or [] if c.get("system") == RXNORM}


# -- every example: the cards it must give, and the CDS Hooks rules ---------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.__name__ for e in EXAMPLES])
def test_example_gives_the_expected_cards_with_the_expected_indicators(app, client, example):
    payload, cards = run(app, client, example)
    expected = EXPECTED[example]
    assert sorted(topics(cards)) == sorted(expected), f"topics {topics(cards)}"
    for card in cards:
        assert card["indicator"] in expected[card["source"]["topic"]["code"]], (card["source"]["topic"]["code"], card["indicator"])
    if not expected:
        assert payload == {"cards": []}


@pytest.mark.parametrize("example", EXAMPLES + MORE, ids=[e.__name__ for e in EXAMPLES + MORE])
def test_example_response_follows_the_cds_hooks_card_rules(app, client, example):
    payload, cards = run(app, client, example)
    assert response_problems(payload) == []
    if example in MORE:
        assert cards


@pytest.mark.parametrize("example", EXAMPLES + MORE, ids=[e.__name__ for e in EXAMPLES + MORE])
def test_every_suggested_resource_is_valid_r4(app, client, example):
    payload, cards = run(app, client, example)
    hook, patient, drafts = example()
    for card in cards:
        for action in actions_of(card):
            if "resource" in action:
                assert r4b_problems(action["resource"]) == [], card["summary"]
                subject = action["resource"].get("subject")
                if subject is not None:
                    assert subject == {"reference": f"Patient/{patient.id}"}


@pytest.mark.parametrize("example", EXAMPLES + MORE, ids=[e.__name__ for e in EXAMPLES + MORE])
def test_the_response_is_the_same_on_a_second_call_apart_from_uuids(app, client, example):
    hook, patient, drafts = example()
    body = hook_body(app, hook, patient, drafts)
    first = cards_of(client, hook, body)
    second = cards_of(client, hook, body)
    assert without_uuids(first) == without_uuids(second)
    first_ids = {c["uuid"] for c in first} | {s["uuid"] for c in first for s in suggestions_of(c)}
    second_ids = {c["uuid"] for c in second} | {s["uuid"] for c in second for s in suggestions_of(c)}
    assert not first_ids & second_ids, "uuids must be fresh on every call (feedback is joined by them)"


def test_every_card_names_the_protocol_and_its_version_in_its_source(app, client):
    publication = state_of(app).engine.content.publication
    for example in EXAMPLES:
        for card in run(app, client, example)[1]:
            assert publication["version"] in card["source"]["label"]
            assert card["source"]["topic"]["system"].startswith("http")


def test_the_source_link_leads_to_the_protocol_page(app, client):
    card = run(app, client, example_1)[1][0]
    url = urlsplit(card["source"]["url"])
    assert url.netloc == "localhost", "a link on the service's own host (no public_base_url configured)"
    answer = client.get(url.path)
    assert answer.status_code == 200


# -- what each example must show ------------------------------------------------------------------------------------------


def test_example_1_plan_card_creates_a_valid_careplan_with_heat_and_cyclobenzaprine(app, client):
    cards = run(app, client, example_1)[1]
    plan = by_topic(cards, "phase-plan")
    assert "day 1, 20 hours since onset" in plan["summary"] and "immediate" in plan["summary"].lower()
    assert "no physical therapy" in plan["detail"].lower()
    assert plan["selectionBehavior"] in ("any", "at-most-one")
    careplan = careplan_of(plan)
    assert r4b_problems(careplan) == []
    assert careplan["subject"] == {"reference": "Patient/pat-1"}
    assert careplan["status"] == "draft" and careplan["intent"] == "proposal"
    ids = {r["id"] for r in careplan["contained"]}
    assert all(a["reference"]["reference"].lstrip("#") in ids for a in careplan["activity"])
    [group] = contained(careplan, "RequestGroup")
    referenced = set()
    stack = list(group["action"])
    while stack:
        action = stack.pop()
        if "resource" in action:
            referenced.add(action["resource"]["reference"].lstrip("#"))
        stack.extend(action.get("action") or [])
    requests = [r for r in careplan["contained"] if r["resourceType"] != "RequestGroup"]
    assert {r["id"] for r in requests} == referenced, "every contained request is an action of the RequestGroup"
    for request in requests:
        assert request["status"] == "draft" and request.get("intent", "proposal") == "proposal"
    [heat] = contained(careplan, "ServiceRequest")
    assert in_valueset(app, heat["code"], "heat-therapy")
    assert contained(careplan, "MedicationRequest") == [], "the order comes from the proposal card only"
    [listed] = [c for c in contained(careplan, "CommunicationRequest") if "cyclobenzaprine" in c["payload"][0]["contentString"].lower()]
    assert "5 mg" in listed["payload"][0]["contentString"]


def test_example_1_proposal_card_orders_cyclobenzaprine_5_mg_three_times_daily_for_21_days(app, client):
    card = by_topic(run(app, client, example_1)[1], "cyclobenzaprine")
    [action] = actions_of(card)
    order = action["resource"]
    assert action["type"] == "create" and order["resourceType"] == "MedicationRequest"
    assert rxnorm_codes(order) == {"828320"}
    dosage = order["dosageInstruction"][0]
    assert (dosage["doseAndRate"][0]["doseQuantity"]["value"], dosage["doseAndRate"][0]["doseQuantity"]["code"]) == (5, "mg")
    repeat = dosage["timing"]["repeat"]
    assert (repeat["frequency"], repeat["period"], repeat["periodUnit"]) == (3, 1, "d")
    assert (repeat["boundsDuration"]["value"], repeat["boundsDuration"]["code"]) == (21, "d")


def test_example_2_withholds_cyclobenzaprine_and_says_why(app, client):
    cards = run(app, client, example_2)[1]
    plan = by_topic(cards, "phase-plan")
    assert contained(careplan_of(plan), "MedicationRequest") == []
    assert "MAO" in plan["detail"]
    why = by_topic(cards, "S1")
    assert "Phenelzine" in why["summary"] + why["detail"]
    assert not any(a["resource"]["resourceType"] == "MedicationRequest" for c in cards for a in actions_of(c) if "resource" in a)


def test_s1_on_a_draft_is_critical_with_a_suggestion_to_remove_it(app, client):
    card = by_topic(run(app, client, example_2_draft)[1], "S1")
    assert card["indicator"] == "critical"
    assert [a for a in actions_of(card) if a["type"] == "delete"] == [
        {"type": "delete", "description": actions_of(card)[0]["description"], "resourceId": "MedicationRequest/rx-maoi"}]


def test_example_3_older_adult_gets_heat_only(app, client):
    cards = run(app, client, example_3)[1]
    careplan = careplan_of(by_topic(cards, "phase-plan"))
    assert contained(careplan, "MedicationRequest") == []
    [heat] = contained(careplan, "ServiceRequest")
    assert in_valueset(app, heat["code"], "heat-therapy")
    orders = {"MedicationRequest", "ServiceRequest", "DeviceRequest", "NutritionOrder", "VisionPrescription"}
    assert [r for r in careplan["contained"] if r["resourceType"] in orders] == [heat], "heat is the only order"
    why = by_topic(cards, "S6")
    assert "Beers" in why["summary"] + why["detail"]
    assert "65" in by_topic(cards, "phase-plan")["detail"] or "Beers" in by_topic(cards, "phase-plan")["detail"]


def test_example_4_early_recovery_plans_heat_and_gentle_exercise(app, client):
    plan = by_topic(run(app, client, example_4)[1], "phase-plan")
    assert "early recovery" in plan["summary"].lower()
    careplan = careplan_of(plan)
    services = contained(careplan, "ServiceRequest")
    assert any(in_valueset(app, s["code"], "heat-therapy") for s in services)
    assert any(in_valueset(app, s["code"], "therapeutic-exercise") for s in services)
    assert contained(careplan, "MedicationRequest") == []


def test_example_5_rehabilitation_plans_exercise_massage_and_stopping_the_relaxant(app, client):
    hook, patient, _ = example_5()
    order = next(r for r in patient.resources if r["resourceType"] == "MedicationRequest")
    cards = cards_of(client, hook, hook_body(app, hook, patient))
    plan = by_topic(cards, "phase-plan")
    assert "rehabilitation" in plan["summary"].lower()
    services = contained(careplan_of(plan), "ServiceRequest")
    assert any(in_valueset(app, s["code"], "therapeutic-exercise") for s in services)
    assert any(in_valueset(app, s["code"], "massage-therapy") for s in services)
    updates = [a for a in actions_of(plan) if a["type"] == "update"]
    assert len(updates) == 1
    stopped = updates[0]["resource"]
    assert stopped["id"] == order["id"] and stopped["status"] in ("stopped", "completed")
    assert stopped["medicationCodeableConcept"] == order["medicationCodeableConcept"]


def test_example_6_persistent_spasm_refers_and_looks_for_other_causes(app, client):
    plan = by_topic(run(app, client, example_6)[1], "phase-plan")
    assert "persistent" in plan["summary"].lower()
    services = contained(careplan_of(plan), "ServiceRequest")
    assert any(in_valueset(app, s["code"], "multidisciplinary-rehabilitation") for s in services)
    assert "cause" in plan["detail"].lower()


def test_example_7_warns_to_stop_and_suggests_stopping_that_order(app, client):
    hook, patient, _ = example_7()
    order = next(r for r in patient.resources if r["resourceType"] == "MedicationRequest")
    card = by_topic(cards_of(client, hook, hook_body(app, hook, patient)), "S11")
    [update] = actions_of(card)
    assert update["type"] == "update"
    assert update["resource"]["id"] == order["id"] and update["resource"]["status"] == "stopped"
    assert update["resource"]["medicationCodeableConcept"] == order["medicationCodeableConcept"]


@pytest.mark.parametrize("example, reference", [(example_8, "ServiceRequest/tens-1"), (example_8_device, "DeviceRequest/tens-2")])
def test_example_8_tens_card_removes_the_draft_and_offers_heat_and_exercise(app, client, example, reference):
    card = by_topic(run(app, client, example)[1], "tens")
    assert card["indicator"] == "info"
    assert card["overrideReasons"], "the clinician may override: override reasons are offered (PROTOCOL §5)"
    replace = [s for s in suggestions_of(card) if {a["type"] for a in s["actions"]} == {"delete", "create"}]
    assert len(replace) == 1
    actions = replace[0]["actions"]
    [delete] = [a for a in actions if a["type"] == "delete"]
    assert delete["resourceId"] == reference and "resource" not in delete
    created = [a["resource"] for a in actions if a["type"] == "create"]
    assert any(in_valueset(app, r["code"], "heat-therapy") for r in created)
    assert any(in_valueset(app, r["code"], "therapeutic-exercise") for r in created)
    assert all(r["status"] == "draft" for r in created)


def test_example_9_course_warning_updates_the_draft_to_21_days(app, client):
    hook, patient, [draft] = example_9()
    card = by_topic(cards_of(client, hook, hook_body(app, hook, patient, [draft])), "S8")
    [update] = [a for a in actions_of(card) if a["type"] == "update"]
    changed = update["resource"]
    assert changed["id"] == "rx-30" and changed["resourceType"] == "MedicationRequest"
    bounds = changed["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]
    assert (bounds["value"], bounds["code"]) == (21, "d")
    assert changed["medicationCodeableConcept"] == draft["medicationCodeableConcept"]
    assert changed["status"] == "draft"


@pytest.mark.parametrize("hook", list(SERVICES))
def test_example_10_no_back_spasm_no_cards_on_any_hook(app, client, hook):
    patient = Patient(45)
    patient.pain(8)
    drafts = [] if hook == "patient-view" else [patient.draft_service(TENS_CPT, draft_id="tens-9")]
    answer = call(client, hook, hook_body(app, hook, patient, drafts))
    assert answer.status_code == 200 and answer.get_json() == {"cards": []}


def test_example_11_order_sign_warns_not_recommended_and_suggests_removal(app, client):
    card = by_topic(run(app, client, example_11_draft)[1], "S4")
    assert "not recommended" in (card["summary"] + card["detail"]).lower()
    assert [a["resourceId"] for a in actions_of(card) if a["type"] == "delete"] == ["MedicationRequest/rx-1"]


def test_example_11_patient_view_proposes_no_cyclobenzaprine(app, client):
    cards = run(app, client, example_11)[1]
    assert contained(careplan_of(by_topic(cards, "phase-plan")), "MedicationRequest") == []
    assert "hepatic" in by_topic(cards, "S4")["summary"].lower()


def test_example_12_keeps_the_proposal_and_names_sertraline(app, client):
    cards = run(app, client, example_12)[1]
    warning = by_topic(cards, "cyclobenzaprine")
    assert warning["indicator"] == "warning" and warning["overrideReasons"], "the proposal card itself is the S7 warning"
    assert "sertraline" in warning["summary"].lower()
    assert "serotonin syndrome" in warning["detail"].lower()
    assert rxnorm_codes(actions_of(warning)[0]["resource"]) == {"828320"}


# -- which drafts each order hook looks at ----------------------------------------------------------------------------


def two_drafts():
    patient = severe()
    return patient, patient.draft_service(TENS_CPT, draft_id="tens-a"), patient.draft_medication(
        CYCLOBENZAPRINE_10, per_day=3, days=30, draft_id="rx-b")


def test_order_select_reviews_only_the_selections(app, client):
    patient, tens, course = two_drafts()
    assert topics(cards_of(client, "order-select", hook_body(app, "order-select", patient, [tens, course],
                                                              selections=["ServiceRequest/tens-a"]))) == ["tens"]
    assert topics(cards_of(client, "order-select", hook_body(app, "order-select", patient, [tens, course],
                                                              selections=["MedicationRequest/rx-b"]))) == ["S8"]


def test_order_sign_reviews_every_draft(app, client):
    patient, tens, course = two_drafts()
    cards = cards_of(client, "order-sign", hook_body(app, "order-sign", patient, [tens, course]))
    assert sorted(topics(cards)) == ["S8", "tens"]
    assert response_problems({"cards": cards}) == []


def test_nothing_wrong_with_the_drafts_gives_no_cards(app, client):
    patient = severe()
    fine = patient.draft_medication(CYCLOBENZAPRINE_5, per_day=3, days=14, draft_id="rx-ok")
    for hook in ("order-select", "order-sign"):
        answer = call(client, hook, hook_body(app, hook, patient, [fine]))
        assert answer.get_json() == {"cards": []}


def test_data_problem_cards_propose_no_medication(app, client):
    """An onset missing or in the future: one info card naming the problem, with heat and exercise advice, no medication."""
    for example in (onset_missing, onset_in_future):
        [card] = run(app, client, example)[1]
        assert card["indicator"] == "info"
        assert "onset" in card["summary"].lower()
        assert "heat" in card["detail"].lower() and "exercise" in card["detail"].lower()
        assert not any(a["resource"]["resourceType"] == "MedicationRequest" for a in actions_of(card) if "resource" in a)


def test_several_unsupported_orders_each_get_their_card(app, client):
    cards = run(app, client, many_draft_problems)[1]
    deleted = {a["resourceId"] for c in cards for a in actions_of(c) if a["type"] == "delete"}
    assert {"DeviceRequest/brace-1", "ServiceRequest/traction-1", "ServiceRequest/tens-4"} <= deleted
    assert {"S7", "S8", "S9"} <= set(topics(cards))
