"""On the order hooks every card names the draft order it is about, in a namespaced card extension, so that an EHR
can show it on that order's line; patient-view cards name none."""

from __future__ import annotations

import pytest

from service.cds_hooks.cards import DRAFT_ORDER_EXTENSION
from tests.patients import CYCLOBENZAPRINE_10, PHENELZINE, TENS_DEVICE, Patient
from tests.service_helpers import by_topic, cards_of, hook_body, make_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("card-extension"))


def _patient() -> Patient:
    p = Patient(45)
    p.spasm(20)
    p.medication(PHENELZINE, kind="statement")
    return p


@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
def test_each_card_names_the_draft_it_reviews(app, hook):
    p = _patient()
    drug = p.draft_medication(CYCLOBENZAPRINE_10, draft_id="cbz-1")
    tens = p.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id="tens-1")
    cards = cards_of(app.test_client(), hook, hook_body(app, hook, p, [drug, tens]))
    named = {card["extension"][DRAFT_ORDER_EXTENSION]["reference"] for card in cards}
    assert named <= {"MedicationRequest/cbz-1", "DeviceRequest/tens-1"} and "MedicationRequest/cbz-1" in named
    maoi = by_topic(cards, "S1")
    assert maoi["extension"][DRAFT_ORDER_EXTENSION] == {"resourceType": "MedicationRequest", "id": "cbz-1",
                                                        "reference": "MedicationRequest/cbz-1"}


def test_patient_view_cards_name_no_draft(app):
    cards = cards_of(app.test_client(), "patient-view", hook_body(app, "patient-view", _patient()))
    assert cards and all(DRAFT_ORDER_EXTENSION not in card.get("extension", {}) for card in cards)


def test_a_draft_without_an_id_is_named_by_no_card(app):
    p = _patient()
    drug = p.draft_medication(CYCLOBENZAPRINE_10)
    drug.pop("id", None)
    cards = cards_of(app.test_client(), "order-sign", hook_body(app, "order-sign", p, [drug]))
    assert cards and all(DRAFT_ORDER_EXTENSION not in card.get("extension", {}) for card in cards)
