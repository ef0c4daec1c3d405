"""The engine's FHIRPath against fhirpath.js, HL7's reference implementation, with every difference explained.

The same evaluations as tests/test_fhirpath_differential.py (every expression of the content over varied records,
and the literal tables of tests/test_fhirpath.py) go to one Node process (tests/fhirpath_js/run.mjs, fhirpath.js
pinned in tests/fhirpath_js/package.json), with the same variable values. Skipped, saying why, when Node or the
installed package is missing: ``npm ci`` in tests/fhirpath_js, or FHIRPATH_JS_DIR naming an installed copy
(.ci/run installs one).
"""

from __future__ import annotations

import time

import pytest

from tests import fhirpath_crosscheck as cc

ORACLE = "fhirpath.js"


@pytest.fixture(scope="module")
def checked() -> tuple[list[cc.Evaluation], list[dict], float]:
    folder, why = cc.fhirpath_js_dir()
    if folder is None:
        pytest.skip(why)
    content, evaluations, resources = cc.crosscheck_inputs()
    started = time.monotonic()
    answers = cc.run_fhirpath_js(folder, cc.fhirpath_js_input(evaluations, content, resources))
    return evaluations, answers, time.monotonic() - started


def test_every_difference_with_fhirpath_js_is_explained(checked):
    evaluations, answers, _ = checked
    unexplained, _ = cc.differences(ORACLE, evaluations, answers)
    assert not unexplained, (f"{len(unexplained)} differences with {ORACLE} are not explained in "
                             f"{cc.DIFFERENCES_FILE.name}:\n" + "\n".join(unexplained[:20]))


def test_every_fhirpath_js_explanation_still_happens(checked):
    evaluations, answers, _ = checked
    _, used = cc.differences(ORACLE, evaluations, answers)
    stale = cc.stale_explanations(ORACLE, used)
    assert not stale, f"explained differences with {ORACLE} that no longer happen (remove them from {cc.DIFFERENCES_FILE.name}): {stale}"


def test_most_evaluations_agree(checked):
    """fhirpath.js really runs: the explained differences are the exception, not the rule."""
    evaluations, answers, _ = checked
    agreeing = sum(cc.same(cc.engine_answer(e), a) for e, a in zip(evaluations, answers, strict=True))
    assert agreeing >= 0.98 * len(evaluations)


def test_one_node_process_answers_every_case_quickly(checked):
    """All cases in one process: well under the 30 s the cross-check may take, even on a busy machine."""
    evaluations, answers, seconds = checked
    assert len(answers) == len(evaluations)
    assert seconds < 30, f"fhirpath.js took {seconds:.1f} s for {len(evaluations)} cases"
