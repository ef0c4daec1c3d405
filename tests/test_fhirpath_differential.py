"""The engine's FHIRPath against plain fhirpathpy, expression by expression, with every difference explained.

Every FHIRPath expression of the content (Library variables in order, PlanDefinition variables, applicability
conditions and dynamicValues, ActivityDefinition dynamicValues) is evaluated by the engine over varied records
(tests/fhirpath_crosscheck.py), and again by ``fhirpathpy`` (R4 model) with the same variable values, as are the
literal tables of tests/test_fhirpath.py. A difference must be explained in tests/data/fhirpath-differences.json,
and an explanation that no longer matches any difference must go, so that the file says what is true.
"""

from __future__ import annotations

import pytest

from tests import fhirpath_crosscheck as cc

ORACLE = "fhirpathpy"


@pytest.fixture(scope="module")
def checked() -> tuple[list[cc.Evaluation], list[dict]]:
    content, evaluations, resources = cc.crosscheck_inputs()
    return evaluations, cc.fhirpathpy_results(evaluations, content, resources)


def test_every_expression_of_the_content_is_checked_over_varied_records():
    """Each expression text of the content is evaluated; the records reach every phase, in and out of scope, and the review."""
    content, evaluations, _ = cc.crosscheck_inputs()
    evaluated = {e.source for e in evaluations}
    missing = cc.content_expression_texts(content) - evaluated
    assert not missing, f"expressions never evaluated: {sorted(missing)[:5]}"
    phases = {e.result[0]["value"] for e in evaluations if e.source.startswith("iif(%onset.empty()") and e.result}
    assert phases == {0, 1, 2, 3, 4}
    applies = {e.result[0]["value"] for e in evaluations if e.source.startswith("%inScope and %redFlagFinding") and e.result}
    assert applies == {True, False}
    assert {e.plan for e in evaluations} >= {cc.PATHWAY, cc.REVIEW}
    assert len({e.record for e in evaluations}) >= 10


def test_the_engine_evaluates_every_expression_without_error():
    """An error of the engine would count as agreement with an oracle's error: there must be none."""
    _, evaluations, _ = cc.crosscheck_inputs()
    failed = [f"{e.record} {e.where}: {e.error}" for e in evaluations if e.result is None]
    assert not failed, "\n".join(failed[:10])


def test_every_difference_with_fhirpathpy_is_explained(checked):
    evaluations, answers = checked
    unexplained, _ = cc.differences(ORACLE, evaluations, answers)
    assert not unexplained, (f"{len(unexplained)} differences with {ORACLE} are not explained in "
                             f"{cc.DIFFERENCES_FILE.name}:\n" + "\n".join(unexplained[:20]))


def test_every_fhirpathpy_explanation_still_happens(checked):
    evaluations, answers = checked
    _, used = cc.differences(ORACLE, evaluations, answers)
    stale = cc.stale_explanations(ORACLE, used)
    assert not stale, f"explained differences with {ORACLE} that no longer happen (remove them from {cc.DIFFERENCES_FILE.name}): {stale}"


def test_most_evaluations_agree(checked):
    """The oracle really runs: the explained differences are the exception, not the rule."""
    evaluations, answers = checked
    agreeing = sum(cc.same(cc.engine_answer(e), a) for e, a in zip(evaluations, answers, strict=True))
    assert agreeing >= 0.95 * len(evaluations)


def test_the_oracles_get_the_engines_clock_as_literals():
    clock = cc.p.CLOCK
    assert cc.fixed_clock("%onset > now() - 48 hours", clock) == "%onset > @2026-11-25T10:00:00.000Z - 48 hours"
    assert cc.fixed_clock("%birthLatest <= today() - 18 years", clock) == "%birthLatest <= @2026-11-25 - 18 years"
    assert cc.fixed_clock("'call now() or today ()'", clock) == "'call now() or today ()'"


def test_the_oracles_membership_answers_from_the_shipped_expansions():
    content, _, _ = cc.crosscheck_inputs()
    codes = cc.valueset_codes(content)
    spasm = "http://example.org/fhir/back-spasm-cds/ValueSet/back-muscle-spasm"
    assert cc._member_of(codes, cc.p.concept(cc.p.SPASM_ICD), spasm) is True
    assert cc._member_of(codes, cc.p.coding(cc.p.SPASM_SCT), spasm) is True
    assert cc._member_of(codes, cc.p.concept(cc.p.HEART_FAILURE), spasm) is False
    assert cc._member_of(codes, cc.p.concept(cc.p.SPASM_ICD), spasm + "-unknown") is None


def test_explanations_are_well_formed():
    """Each entry names its pattern, what the engine does, whether it is an engine bug, and why per oracle."""
    entries = cc.load_explanations()
    assert len({e["id"] for e in entries}) == len(entries)
    for entry in entries:
        assert entry["pattern"] and entry["engine"] and entry["spec"] and isinstance(entry["engine_bug"], bool), entry["id"]
        assert entry["oracles"] and set(entry["oracles"]) <= {"fhirpathpy", "fhirpath.js"}, entry["id"]
        assert all(o["why"] for o in entry["oracles"].values()), entry["id"]
