"""Code-system URI variants (PROTOCOL.md §4a "Code systems").

Records write RxNorm, SNOMED CT, LOINC and ICD-10-CM with ``http`` or ``https`` and with or without a trailing
slash. Each spelling must match a ValueSet member the same way, in a retrieve (the record's code filter) and in
FHIRPath ``memberOf()``, while a system that is not one of these spellings must not match.
"""

from __future__ import annotations

import pytest

from protocol.engine.content import load_content
from protocol.engine.fhirpath import EvaluationContext, default_evaluator
from protocol.engine.record import Record
from protocol.engine.terminology import SYSTEM_ALIASES, canonical_system, index_codes
from tests.cds_support import VS, cards, engine, phase, view
from tests.patients import (
    CLOCK,
    ICD,
    LOINC,
    PAIN_NRS,
    PHENELZINE,
    RXNORM,
    SCT,
    SPASM_ICD,
    SPASM_SCT,
    Patient,
    concept,
)

__all__ = ["engine"]

#: One ValueSet member of each system, with the resource type and element that carry it.
MEMBERS = {
    "rxnorm": (PHENELZINE, "maoi", "MedicationRequest", "medicationCodeableConcept", "medication"),
    "snomed": (SPASM_SCT, "back-muscle-spasm", "Condition", "code", "code"),
    "loinc": (PAIN_NRS, "pain-severity-0-10", "Observation", "code", "code"),
    "icd-10-cm": (SPASM_ICD, "back-muscle-spasm", "Condition", "code", "code"),
}


def https(system: str) -> str:
    return system.replace("http://", "https://", 1)


VARIANTS = {"https": https, "trailing-slash": lambda s: s + "/", "https-and-slash": lambda s: https(s) + "/",
            "as-written": lambda s: s}


def wrong_spellings(system: str) -> list[str]:
    """Systems that are not this one: another host, a longer path, two slashes, another standard system."""
    others = [s for s in (RXNORM, SCT, LOINC, ICD) if s != system]
    return [system.replace("://", "://example.org/", 1), system + "/extra", system + "//", system.upper(), others[0]]


@pytest.fixture(scope="module")
def terminology():
    return load_content().terminology


@pytest.fixture(scope="module")
def evaluator():
    return default_evaluator()


def resource_with(kind: str, system: str) -> dict:
    (canonical, code, display), _, rtype, element, _ = MEMBERS[kind]
    return {"resourceType": rtype, "id": "r1", "status": "active", "subject": {"reference": "Patient/p"},
            element: {"coding": [{"system": system, "code": code, "display": display}]}}


def retrieved(terminology, kind: str, system: str) -> bool:
    _, valueset, rtype, _, path = MEMBERS[kind]
    record = Record.from_data([{"resourceType": "Patient", "id": "p"}, resource_with(kind, system)], terminology, CLOCK, "Patient/p")
    return bool(record.retrieve({"type": rtype, "codeFilter": [{"path": path, "valueSet": VS + valueset}]}))


def member(terminology, evaluator, kind: str, system: str) -> bool:
    _, valueset, rtype, element, _ = MEMBERS[kind]
    context = EvaluationContext(now=CLOCK, member_of=terminology.member_of, resolve=lambda reference: None)
    compiled = evaluator.compile(f"%r.{element}.memberOf('{VS}{valueset}')")
    result = compiled({"r": [evaluator.node(resource_with(kind, system))]}, context)
    return [evaluator.to_json(item) for item in result] == [True]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", list(MEMBERS))
def test_every_spelling_matches_in_a_retrieve(terminology, kind, variant):
    assert retrieved(terminology, kind, VARIANTS[variant](MEMBERS[kind][0][0]))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", list(MEMBERS))
def test_every_spelling_matches_in_member_of(terminology, evaluator, kind, variant):
    assert member(terminology, evaluator, kind, VARIANTS[variant](MEMBERS[kind][0][0]))


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_a_wrong_system_matches_nowhere(terminology, evaluator, kind):
    for system in wrong_spellings(MEMBERS[kind][0][0]):
        assert not retrieved(terminology, kind, system), system
        assert not member(terminology, evaluator, kind, system), system


@pytest.mark.parametrize("variant", ["https", "trailing-slash", "https-and-slash"])
def test_listed_codes_of_a_code_filter_match_every_spelling_too(terminology, variant):
    """A codeFilter may list its codes instead of naming a ValueSet; the same spellings match."""
    record = Record.from_data([resource_with("icd-10-cm", VARIANTS[variant](ICD))], terminology, CLOCK)
    requirement = {"type": "Condition", "codeFilter": [{"path": "code", "code": [{"system": ICD, "code": "M62.830"}]}]}
    assert [r["id"] for r in record.retrieve(requirement)] == ["r1"]


def test_the_alias_table_covers_four_spellings_of_each_system_and_nothing_else():
    assert len(SYSTEM_ALIASES) == 16
    for system in (RXNORM, SCT, LOINC, ICD):
        assert {canonical_system(VARIANTS[v](system)) for v in VARIANTS} == {system}
    assert canonical_system("https://example.org/sct") == "https://example.org/sct"
    assert index_codes([("https://loinc.org/", "1-8")]) == {"1-8": frozenset({LOINC})}


# ---------------------------------------------------------------------------------- through the protocol


def test_a_spasm_coded_with_https_and_a_slash_puts_the_patient_in_scope(engine):
    patient = Patient(45)
    spasm = patient.spasm(20)
    spasm["code"]["coding"][0]["system"] = "https://hl7.org/fhir/sid/icd-10-cm/"
    assert phase(view(engine, patient)) == 1


def test_an_maoi_coded_with_https_withholds_cyclobenzaprine(engine):
    patient = Patient(45)
    patient.spasm(20)
    order = patient.medication(PHENELZINE)
    order["medicationCodeableConcept"] = concept((https(RXNORM), PHENELZINE[1], PHENELZINE[2]))
    assert "withheld-maoi" in cards(view(engine, patient))
