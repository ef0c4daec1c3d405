"""Retrieval from a patient's record: type, ValueSet and code filters, date windows, and the per-request cache."""

from __future__ import annotations

import gc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.engine.content import load_content
from protocol.engine.record import Record
from tests.patients import CLOCK, HEART_FAILURE, ICD, PHENELZINE, PT_PROCEDURE, SERTRALINE, SPASM_ICD, SPASM_SCT, concept, when

SPASM_VS = "http://example.org/fhir/back-spasm-cds/ValueSet/back-muscle-spasm"


@pytest.fixture(scope="module")
def terminology():
    return load_content().terminology


def condition(cid: str, code: tuple[str, str, str], days_ago: float) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p"}, "code": concept(code),
            "onsetDateTime": when(days_ago=days_ago)}


@pytest.fixture()
def record(terminology) -> Record:
    data = [{"resourceType": "Patient", "id": "p"},
            condition("spasm-sct", SPASM_SCT, 3), condition("spasm-icd", SPASM_ICD, 40), condition("hf", HEART_FAILURE, 400),
            {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": condition("spasm-sct", SPASM_SCT, 3)}]}]
    return Record.from_data(data, terminology, CLOCK)


def ids(resources) -> list[str]:
    return sorted(r["id"] for r in resources)


def test_a_valueset_filter_keeps_codings_of_either_system(record):
    found = record.retrieve({"type": "Condition", "codeFilter": [{"path": "code", "valueSet": SPASM_VS}]})
    assert ids(found) == ["spasm-icd", "spasm-sct"]


def test_listed_codes_filter_without_a_valueset(record):
    found = record.retrieve({"type": "Condition", "codeFilter": [{"path": "code", "code": [{"system": ICD, "code": "M62.830"}]}]})
    assert ids(found) == ["spasm-icd"]


def test_a_date_window_back_from_the_clock(record):
    requirement = {"type": "Condition", "codeFilter": [{"path": "code", "valueSet": SPASM_VS}],
                   "dateFilter": [{"path": "onset", "valueDuration": {"value": 7, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}]}
    assert ids(record.retrieve(requirement)) == ["spasm-sct"]


def test_a_type_without_filters_gives_every_resource_of_it_once(record):
    assert ids(record.retrieve({"type": "Condition"})) == ["hf", "spasm-icd", "spasm-sct"]


def test_requirements_made_and_dropped_one_after_another_never_share_an_answer(record):
    """The cache is keyed by the requirement object: a dropped requirement's id must not answer for a new one."""
    assert len(record.retrieve({"type": "Condition"})) == 3
    assert record.retrieve({"type": "MedicationRequest"}) == []
    answers = []
    for code in ("M62.830", "I50.9", "M62.830", "I50.9"):
        answers.append(ids(record.retrieve({"type": "Condition", "codeFilter": [{"path": "code", "code": [{"system": ICD, "code": code}]}]})))
        gc.collect()
    assert answers == [["spasm-icd"], [], ["spasm-icd"], []]


def test_the_same_requirement_twice_is_answered_from_the_cache(record):
    requirement = {"type": "Condition", "codeFilter": [{"path": "code", "valueSet": SPASM_VS}]}
    assert record.retrieve(requirement) is record.retrieve(requirement)


PT_VS = "http://example.org/fhir/back-spasm-cds/ValueSet/physical-therapy"
MAOI_VS_URL = "http://example.org/fhir/back-spasm-cds/ValueSet/maoi"


def test_a_list_of_concepts_matches_on_any_of_them(terminology):
    encounters = [{"resourceType": "Encounter", "id": "pt", "type": [concept(HEART_FAILURE), concept(PT_PROCEDURE)]},
                  {"resourceType": "Encounter", "id": "other", "type": [concept(HEART_FAILURE)]},
                  {"resourceType": "Encounter", "id": "none", "type": []}]
    record = Record.from_data(encounters, terminology, CLOCK)
    assert ids(record.retrieve({"type": "Encounter", "codeFilter": [{"path": "type", "valueSet": PT_VS}]})) == ["pt"]


def test_a_medication_matches_in_place_or_through_its_reference(terminology):
    """medication[x] is read as medicationCodeableConcept, or through medicationReference to a Medication's code."""
    data = [{"resourceType": "MedicationRequest", "id": "inline", "medicationCodeableConcept": concept(PHENELZINE)},
            {"resourceType": "MedicationRequest", "id": "by-ref", "medicationReference": {"reference": "Medication/m1"}},
            {"resourceType": "MedicationRequest", "id": "contained", "medicationReference": {"reference": "#m2"},
             "contained": [{"resourceType": "Medication", "id": "m2", "code": concept(PHENELZINE)}]},
            {"resourceType": "MedicationRequest", "id": "ssri", "medicationCodeableConcept": concept(SERTRALINE)},
            {"resourceType": "Medication", "id": "m1", "code": concept(PHENELZINE)}]
    record = Record.from_data(data, terminology, CLOCK)
    found = record.retrieve({"type": "MedicationRequest", "codeFilter": [{"path": "medication", "valueSet": MAOI_VS_URL}]})
    assert ids(found) == ["by-ref", "contained", "inline"]


def test_malformed_codings_are_skipped_not_raised(terminology):
    broken = [{"resourceType": "Condition", "id": "c1", "code": {"coding": [{"system": ["x"], "code": {"a": 1}}, {"system": ["x"], "code": "M62.830"}, "text", None]}},
              {"resourceType": "Condition", "id": "c2", "code": {"coding": {"system": ICD, "code": "M62.830"}}},
              {"resourceType": "Condition", "id": "c3", "code": {"coding": [{"system": ICD, "code": ["M62.830"]}, concept(SPASM_ICD)["coding"][0]]}}]
    record = Record.from_data(broken, terminology, CLOCK)
    assert ids(record.retrieve({"type": "Condition", "codeFilter": [{"path": "code", "valueSet": SPASM_VS}]})) == ["c3"]


def test_a_medication_sent_both_inline_and_by_reference_is_matched_on_either(terminology):
    """Invalid but seen: both medication[x] variants. An MAOI named by either one must not be missed."""
    data = [{"resourceType": "MedicationRequest", "id": "both", "medicationCodeableConcept": concept(SERTRALINE),
             "medicationReference": {"reference": "Medication/m1"}},
            {"resourceType": "Medication", "id": "m1", "code": concept(PHENELZINE)}]
    record = Record.from_data(data, terminology, CLOCK)
    assert ids(record.retrieve({"type": "MedicationRequest", "codeFilter": [{"path": "medication", "valueSet": MAOI_VS_URL}]})) == ["both"]



# -- the in-place reading of codes agrees with the general one ---------------------------------------------

SPASM_CODES = [SPASM_ICD, SPASM_SCT]
_codings = st.one_of(
    st.sampled_from(SPASM_CODES + [PHENELZINE, SERTRALINE, HEART_FAILURE, PT_PROCEDURE]).map(lambda c: {"system": c[0], "code": c[1]}),
    st.sampled_from(SPASM_CODES).map(lambda c: {"system": "http://example.org/other", "code": c[1]}),
    st.sampled_from(SPASM_CODES).map(lambda c: {"code": c[1]}),
    st.sampled_from(SPASM_CODES).map(lambda c: {"system": [c[0]], "code": c[1]}),
    st.just("junk"), st.none(),
)
_concepts = st.one_of(
    st.lists(_codings, max_size=3).map(lambda codings: {"coding": codings}),
    _codings.filter(lambda c: isinstance(c, dict)),
    _codings.map(lambda c: {"coding": c}),
    st.just({"text": "free text"}),
)
_values = st.one_of(_concepts, st.lists(_concepts, max_size=2), st.just([]), st.just("code"))


@st.composite
def _resources(draw) -> dict:
    resource = {"resourceType": draw(st.sampled_from(["Condition", "MedicationRequest", "Encounter"])), "id": f"r{draw(st.integers(0, 10**6))}"}
    for element in draw(st.lists(st.sampled_from(["code", "type", "medicationCodeableConcept", "medicationReference"]), unique=True)):
        if element == "medicationReference":
            resource[element] = {"reference": draw(st.sampled_from(["Medication/m1", "Medication/m2", "#c1"]))}
            resource["contained"] = [{"resourceType": "Medication", "id": "c1", "code": draw(_concepts)}]
        else:
            resource[element] = draw(_values)
    return resource


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(resources=st.lists(_resources(), max_size=8), medications=st.tuples(_concepts, _concepts))
def test_retrieve_reads_codes_as_the_general_path_reader_does(terminology, resources, medications):
    """The fast reading (CodeableConcepts in place) must keep exactly the resources the general reader keeps,
    whatever the shape: lists, bare Codings, choice elements, references, malformed codings."""
    data = [*resources, {"resourceType": "Medication", "id": "m1", "code": medications[0]},
            {"resourceType": "Medication", "id": "m2", "code": medications[1]}]
    record = Record.from_data(data, terminology, CLOCK)
    for rtype, path, valueset in [("Condition", "code", SPASM_VS), ("Encounter", "type", SPASM_VS),
                                  ("MedicationRequest", "medication", MAOI_VS_URL), ("MedicationRequest", "code", SPASM_VS)]:
        wanted = terminology.codes(valueset)
        expected = [r for r in record.of_type(rtype) if record._codes_of_element(r, path) & wanted]
        found = record.retrieve({"type": rtype, "codeFilter": [{"path": path, "valueSet": valueset}]})
        assert [id(r) for r in found] == [id(r) for r in expected], (rtype, path)


@pytest.mark.parametrize("full_url", [{"url": "urn:uuid:1"}, ["urn:uuid:1"], 42, True])
def test_an_entry_whose_full_url_is_not_a_string_is_read_by_its_resource_alone(terminology, full_url):
    patient = {"resourceType": "Patient", "id": "p1"}
    spasm = condition("c1", SPASM_SCT, 3) | {"subject": {"reference": "Patient/p1"}}
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"fullUrl": full_url, "resource": patient}, {"fullUrl": full_url, "resource": spasm}, {"resource": "Condition/c2"},
                        {"resource": ["not", "a", "resource"]}, "entry"]}
    built = Record.from_data([bundle], terminology, CLOCK, subject="Patient/p1")
    assert built.of_type("Condition") == [spasm] and built.get("Patient/p1") == patient
