"""HL7 FHIRPath conformance cases (tests/data/fhirpath-conformance/) run with the project's evaluator.

- ``test_case``: every case (1,465, as fhirpath-py runs them) with ``default_evaluator()``; the cases
  listed in expected-failures.json are ``xfail(strict=True)``, so that fixing one fails here until its
  entry is removed.
- The list is checked against plain fhirpathpy (``fhirpathpy.evaluate`` with the R4 model, computed
  here: about 2 s): category ``a`` entries are cases fhirpathpy fails too; ``b`` and ``c`` entries are
  exactly the cases fhirpathpy passes and the project fails (``b``: the FHIRPath specification makes the
  test's expectation wrong; ``c``: gaps of the project still to close).
- The project passes at least as many cases as fhirpathpy, and the cases fhirpathpy passes that the
  project fails are exactly the category ``b`` entries: both expected to fail (xfail) while any ``c``
  entry remains.

The expected failures are those of the default engine (``native``); with BACK_SPASM_CDS_FHIRPATH
selecting another engine the per-case xfails are not strict, the category check is skipped, and the
cases that engine fails beyond the list fail (``fhirpathpy``: 5.5_conversion/bool to string and
fhir-r4/testTypes/testBooleanLiteralToString).
"""

from __future__ import annotations

import os

import pytest

from tests.fhirpath_conformance import (
    ENGINE_VARIABLE,
    fhirpathpy_passes,
    load_cases,
    load_expected_failures,
    project_evaluate,
    run_all,
    run_case,
)

CASES = load_cases()
EXPECTED_FAILURES = load_expected_failures()
GAPS_TO_CLOSE = sorted(case_id for case_id, entry in EXPECTED_FAILURES.items() if entry["category"] == "c")
SPEC_DIFFERS = sorted(case_id for case_id, entry in EXPECTED_FAILURES.items() if entry["category"] == "b")
_ENGINE = os.environ.get(ENGINE_VARIABLE, "").strip().lower() or "native"
_STRICT = _ENGINE == "native"


def _param(case: dict):
    entry = EXPECTED_FAILURES.get(case["id"])
    marks = []
    if entry is not None:
        marks.append(pytest.mark.xfail(strict=_STRICT, reason=f"({entry['category']}) {entry['reason']}"))
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
        assert entry["category"] in ("a", "b", "c"), case_id
        assert entry["reason"].strip(), case_id
        if entry["category"] == "b":
            assert "§" in entry.get("section", ""), f"{case_id}: a category b entry cites the specification's section"


@pytest.mark.skipif(not _STRICT, reason="expected-failures.json describes the default (native) engine")
def test_categories_agree_with_fhirpathpy(outcomes) -> None:
    """Category a entries are failed by fhirpathpy too; b and c entries are exactly the cases it passes and the project fails."""
    wrong_a = sorted(i for i, e in EXPECTED_FAILURES.items() if e["category"] == "a" and outcomes[i][0])
    assert not wrong_a, f"category a, but plain fhirpathpy passes: {wrong_a}"
    gaps = sorted(i for i, (oracle, project) in outcomes.items() if oracle and not project)
    assert gaps == sorted(SPEC_DIFFERS + GAPS_TO_CLOSE)


@pytest.mark.xfail(bool(GAPS_TO_CLOSE), strict=False, reason=f"{len(GAPS_TO_CLOSE)} category c gaps remain")
def test_no_fewer_passes_than_fhirpathpy(outcomes) -> None:
    oracle_passes = sum(oracle for oracle, _ in outcomes.values())
    project_passes = sum(project for _, project in outcomes.values())
    assert project_passes >= oracle_passes, f"project {project_passes} < fhirpathpy {oracle_passes} of {len(outcomes)}"


@pytest.mark.xfail(bool(GAPS_TO_CLOSE), strict=bool(GAPS_TO_CLOSE) and _STRICT, reason=f"{len(GAPS_TO_CLOSE)} category c gaps remain")
def test_fhirpathpy_passes_fail_only_where_the_specification_differs(outcomes) -> None:
    gaps = sorted(i for i, (oracle, project) in outcomes.items() if oracle and not project)
    assert gaps == SPEC_DIFFERS
