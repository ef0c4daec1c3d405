"""Copies of JSON data: independent of the original at every depth, equal to it, scalars shared."""

from __future__ import annotations

import copy
import re
import sys
from decimal import Decimal

import pytest

from protocol.engine.jsondata import MAX_DEPTH, JsonShapeError, check_shape, copy_json
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


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_the_shape_check_accepts_real_resources_and_the_depth_limit_itself():
    resource = {"resourceType": "MedicationRequest", "medicationCodeableConcept": concept(CYCLOBENZAPRINE_5),
                "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 7.5, "unit": "mg"}}], "sequence": 2 ** 31 - 1}],
                "flag": True, "nothing": None, "big": -(2 ** 63 - 1), "smallest": -(2 ** 63), "largest": 2 ** 63 - 1}
    check_shape(resource)
    check_shape(_deep(MAX_DEPTH))


@pytest.mark.parametrize("value, where", [
    ({"a": [{"b": 2 ** 63}]}, "$.a[0].b"),
    ({"a": {"b": float("nan")}}, "$.a.b"),
    ({"a": [1, float("-inf")]}, "$.a[1]"),
    ({"a": 1e300}, "$.a"),
])
def test_numbers_beyond_64_bits_or_not_finite_are_refused_with_their_path(value, where):
    with pytest.raises(JsonShapeError, match=re.escape(where)):
        check_shape(value)


def test_nesting_beyond_the_limit_is_refused_without_recursion():
    with pytest.raises(JsonShapeError, match="nested too deeply"):
        check_shape({"a": _deep(MAX_DEPTH)})
    with pytest.raises(JsonShapeError, match="nested too deeply"):
        check_shape(_deep(sys.getrecursionlimit() * 20))
