"""Copies of JSON data: independent of the original at every depth, equal to it, scalars shared."""

from __future__ import annotations

import copy
from decimal import Decimal

from protocol.jsondata import copy_json
from tests.patients import CYCLOBENZAPRINE_5, concept


def test_a_copy_is_equal_and_shares_no_container_with_the_original():
    original = {"resourceType": "MedicationRequest", "medicationCodeableConcept": concept(CYCLOBENZAPRINE_5),
                "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}], "asNeeded": False}],
                "note": None, "quantity": 2.5}
    copied = copy_json(original)
    assert copied == original
    copied["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = 10
    copied["medicationCodeableConcept"]["coding"].append({"code": "x"})
    assert original["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 5
    assert len(original["medicationCodeableConcept"]["coding"]) == 1


def test_values_that_are_not_plain_json_are_deep_copied():
    inner = {"a": [1]}
    odd = {"decimal": Decimal("1.50"), "tuple": (inner,), "set": {1, 2}}
    copied = copy_json(odd)
    assert copied == copy.deepcopy(odd)
    assert copied["tuple"][0] is not inner
