"""HL7 FHIRPath conformance cases (tests/data/fhirpath-conformance/) run with the project's evaluator.

- ``test_case``: every case (1,465, as fhirpath-py runs them) with ``default_evaluator()``; the cases
  listed in expected-failures.json are ``xfail(strict=True)``, so that fixing one fails here until its
  entry is removed.
- The list is checked against plain fhirpathpy (``fhirpathpy.evaluate`` with the R4 model, computed
  here: about 2 s): category ``a`` entries are cases fhirpathpy fails too; ``b`` entries are exactly the
  cases fhirpathpy passes and the project fails, each where the FHIRPath specification (the section is
  cited) makes the test's expectation wrong.
- The project passes at least as many cases as fhirpathpy.
"""

from __future__ import annotations

import pytest

from tests.fhirpath_conformance import (
    fhirpathpy_passes,
    load_cases,
    load_expected_failures,
    project_evaluate,
    run_all,
    run_case,
)

CASES = load_cases()
EXPECTED_FAILURES = load_expected_failures()
SPEC_DIFFERS = sorted(case_id for case_id, entry in EXPECTED_FAILURES.items() if entry["category"] == "b")


def _param(case: dict):
    entry = EXPECTED_FAILURES.get(case["id"])
    marks = []
    if entry is not None:
        marks.append(pytest.mark.xfail(strict=True, reason=f"({entry['category']}) {entry['reason']}"))
    return pytest.param(case, id=case["id"], marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_case(case: dict) -> None:
    outcome = run_case(case, project_evaluate)
    assert outcome.passed, f"{case['expression']!r}: expected {outcome.expected!r}, got {outcome.got!r}"


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[bool, bool]]:
    """Case id -> (plain fhirpathpy passes, project passes)."""
    oracle = fhirpathpy_passes(CASES)
    project = {outcome.case_id: outcome.passed for outcome in run_all(CASES, project_evaluate)}
    return {case_id: (oracle[case_id], project[case_id]) for case_id in oracle}


def test_expected_failures_are_well_formed() -> None:
    ids = {case["id"] for case in CASES}
    unknown = sorted(set(EXPECTED_FAILURES) - ids)
    assert not unknown, f"expected-failures.json names cases not in cases.json: {unknown}"
    for case_id, entry in EXPECTED_FAILURES.items():
        assert entry["category"] in ("a", "b"), f"{case_id}: a failure is either fhirpathpy's too (a) or the specification's (b)"
        assert entry["reason"].strip(), case_id
        if entry["category"] == "b":
            assert "§" in entry.get("section", ""), f"{case_id}: a category b entry cites the specification's section"


def test_categories_agree_with_fhirpathpy(outcomes) -> None:
    """Category a entries are failed by fhirpathpy too; b entries are exactly the cases it passes and the project fails."""
    wrong_a = sorted(i for i, e in EXPECTED_FAILURES.items() if e["category"] == "a" and outcomes[i][0])
    assert not wrong_a, f"category a, but plain fhirpathpy passes: {wrong_a}"
    gaps = sorted(i for i, (oracle, project) in outcomes.items() if oracle and not project)
    assert gaps == SPEC_DIFFERS


def test_no_fewer_passes_than_fhirpathpy(outcomes) -> None:
    oracle_passes = sum(oracle for oracle, _ in outcomes.values())
    project_passes = sum(project for _, project in outcomes.values())
    assert project_passes >= oracle_passes, f"project {project_passes} < fhirpathpy {oracle_passes} of {len(outcomes)}"
