"""Run the FHIRPath conformance cases of tests/data/fhirpath-conformance/ against an evaluator.

The cases (``cases.json``, see that folder's README.md for where they come from) are the ones
fhirpath-py runs from its ``tests/cases/*.yaml``: HL7's R4 FHIRPath tests (``fhir-r4``) plus groups
per section of the specification.  Each case holds an expression, its input (a resource file of
``resources/`` or a file's inline subject), optionally a ``context`` expression (for %context), extra
``variables``, a ``base`` type path, a ``model``, and either the expected ``result`` (an ordered list)
or ``error: true``.  Cases marked ``disabled`` in the source are kept in the data but not run.

Comparison (``matches``): the result and the expectation are ordered lists of the same length, item
by item: a boolean equals a boolean; a number equals a number numerically (1 = 1.0, decimals as
Decimal); a string equals a string exactly, or the string form of a date/time value (a leading ``@``
or ``T`` ignored on both sides), or a Quantity written as a FHIRPath quantity literal (``1 year``,
``3 'min'``: value compared numerically, calendar units singular/plural alike); an object equals an
object with the same keys and matching values.  An ``error`` case passes when compiling or
evaluating raises an exception.

Command line::

    python tests/fhirpath_conformance.py [--evaluator NAME] [--failures] [--gaps FILE]

NAME: ``project`` (the project's one evaluator, ``default_evaluator()``), ``fhirpathpy`` (plain
fhirpathpy.evaluate, model r4: the reference the tests compare with) or ``fhirpathpy-published`` (plain
fhirpathpy with each case's own model, none when it names none, as fhirpath-py's tests call it).  ``--gaps FILE`` writes the cases
plain fhirpathpy passes and the evaluator fails, with expression, expected and actual results.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "fhirpath-conformance"
CASES_FILE = DATA / "cases.json"
RESOURCES = DATA / "resources"
EXPECTED_FAILURES_FILE = DATA / "expected-failures.json"

Evaluate = Callable[..., list]

# ---------------------------------------------------------------- cases


def load_data() -> dict:
    """The whole data file: ``cases`` (list) and ``subjects`` (inline inputs by source file)."""
    with CASES_FILE.open(encoding="utf-8") as f:
        return json.load(f)


def load_cases(include_disabled: bool = False) -> list[dict]:
    """The cases, in source order; the ones the source disables are left out unless asked for."""
    data = load_data()
    subjects = data["subjects"]
    cases = []
    for case in data["cases"]:
        if case.get("disabled") and not include_disabled:
            continue
        case = dict(case)
        case["_subjects"] = subjects
        cases.append(case)
    return cases


_RESOURCE_CACHE: dict[str, Any] = {}


def case_input(case: dict) -> Any:
    """The input of a case: a fresh copy of its resource file or of its source file's inline subject (or None)."""
    if "inputfile" in case:
        name = case["inputfile"]
        if name not in _RESOURCE_CACHE:
            _RESOURCE_CACHE[name] = (RESOURCES / name).read_text(encoding="utf-8")
        return json.loads(_RESOURCE_CACHE[name])
    source = case.get("input")
    if isinstance(source, str) and source.startswith("subject:"):
        subjects = case.get("_subjects") or load_data()["subjects"]
        return json.loads(json.dumps(subjects[source[len("subject:"):]]))
    return None


def group_of(case_id: str) -> str:
    """The source file (section) of a case id: the part before the first '/'."""
    return case_id.split("/", 1)[0]


# ---------------------------------------------------------------- result values


@dataclass(frozen=True)
class Quantity:
    value: Decimal
    unit: str  # a calendar word, singular ("year"), or a quoted UCUM code ("'mg'")


@dataclass(frozen=True)
class Temporal:
    text: str  # the date, dateTime or time as text


CALENDAR_WORDS = ("year", "month", "week", "day", "hour", "minute", "second", "millisecond")
_QUANTITY_LITERAL = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*('(?:[^'\\]|\\.)*'|[A-Za-z]+)\s*$")


def calendar_unit(unit: str) -> str | None:
    """``years`` -> ``year``; None if not a calendar duration word."""
    word = unit[:-1] if unit.endswith("s") and unit[:-1] in CALENDAR_WORDS else unit
    return word if word in CALENDAR_WORDS else None


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _unit_form(unit: str) -> str:
    calendar = calendar_unit(unit)
    if calendar is not None:
        return calendar
    return unit if unit.startswith("'") else f"'{unit}'"


def _temporal_text(text: str) -> str:
    return text[1:] if text[:1] in ("@", "T") else text


def item_matches(got: Any, expected: Any) -> bool:
    """One result item against one expected item (see the module docstring)."""
    if isinstance(expected, bool):
        return isinstance(got, bool) and got is expected
    if isinstance(expected, (int, float)):
        number = _number(got)
        return number is not None and number == Decimal(str(expected))
    if isinstance(expected, str):
        if isinstance(got, str):
            return got == expected
        if isinstance(got, Temporal):
            return _temporal_text(got.text) == _temporal_text(expected)
        if isinstance(got, Quantity):
            literal = _QUANTITY_LITERAL.match(expected)
            return bool(literal) and got.value == Decimal(literal.group(1)) and got.unit == _unit_form(literal.group(2))
        return False
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and set(got) == set(expected)
            and all(item_matches(got[key], value) for key, value in expected.items())
        )
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(item_matches, got, expected))
    return got == expected


def matches(got: list, expected: list) -> bool:
    """An ordered result list against the expected list."""
    return len(got) == len(expected) and all(item_matches(g, e) for g, e in zip(got, expected))


# ---------------------------------------------------------------- running a case


@dataclass
class Outcome:
    case_id: str
    passed: bool
    got: Any = None  # the result list, or "error: ..." text
    expected: Any = None


def run_case(case: dict, evaluate: Evaluate) -> Outcome:
    """Evaluate one case and compare; an ``error`` case passes when evaluate raises."""
    resource = case_input(case)
    env: dict[str, Any] = {"resource": resource}
    env.update(case.get("variables") or {})
    options = {"model": case.get("model"), "base": case.get("base"), "context": case.get("context")}
    expected = "error" if case.get("error") else case.get("result")
    try:
        got = evaluate(case["expression"], resource, env, **options)
    except Exception as exc:  # noqa: BLE001 - any failure of the evaluator is the outcome
        return Outcome(case["id"], expected == "error", f"error: {type(exc).__name__}: {str(exc)[:300]}", expected)
    if expected == "error":
        return Outcome(case["id"], False, got, expected)
    return Outcome(case["id"], matches(got, expected or []), got, expected)


def run_all(cases: Iterable[dict], evaluate: Evaluate) -> list[Outcome]:
    return [run_case(case, evaluate) for case in cases]


# ---------------------------------------------------------------- adapters: plain fhirpathpy


def _from_fhirpathpy(value: Any) -> Any:
    from fhirpathpy.engine.nodes import FP_Quantity, FP_TimeBase

    if isinstance(value, FP_Quantity):
        return Quantity(Decimal(str(value.value)), _unit_form(value.unit or "'1'"))
    if isinstance(value, FP_TimeBase):
        return Temporal(getattr(value, "asStr", None) or str(value))
    if isinstance(value, list):
        return [_from_fhirpathpy(item) for item in value]
    if isinstance(value, dict):
        return {key: _from_fhirpathpy(item) for key, item in value.items()}
    return value


def _fhirpathpy_run(expression: str, resource: Any, env: dict, model: dict | None, base: str | None, context: str | None) -> list:
    import fhirpathpy
    from fhirpathpy.engine.nodes import TypeInfo

    # fhirpathpy keeps the model of ofType() in a class attribute that only is/as set (to their
    # evaluation's model) and that stays set afterwards: set it here, so that the outcome of a case
    # does not depend on which evaluations ran before it in the process.
    TypeInfo.model = model
    env = dict(env)
    if context is not None:
        found = fhirpathpy.evaluate(resource, context, {}, model)
        env["context"] = found[0] if found else None
    path: Any = {"base": base, "expression": expression} if base else expression
    return [_from_fhirpathpy(item) for item in fhirpathpy.evaluate(resource, path, env, model)]


def fhirpathpy_evaluate(expression: str, resource: Any, env: dict, **options: Any) -> list:
    """Plain ``fhirpathpy.evaluate`` with the R4 model (the case's ``model`` is not used)."""
    from fhirpathpy.models import models

    return _fhirpathpy_run(expression, resource, env, models["r4"], options.get("base"), options.get("context"))


def fhirpathpy_published_evaluate(expression: str, resource: Any, env: dict, **options: Any) -> list:
    """Plain ``fhirpathpy.evaluate`` as fhirpath-py's own tests call it: the case's model, none when it names none."""
    from fhirpathpy.models import models

    model = models[options["model"]] if options.get("model") else None
    return _fhirpathpy_run(expression, resource, env, model, options.get("base"), options.get("context"))


# ---------------------------------------------------------------- adapters: the project's evaluator


def project_fhirpath():
    """The project's FHIRPath module: the ONE place this harness imports the project."""
    from protocol.engine import fhirpath

    return fhirpath


def _project_context(fhirpath: Any) -> Any:
    return fhirpath.EvaluationContext(
        now=datetime.now(timezone.utc),
        member_of=lambda coding, url: False,
        resolve=lambda reference: None,
    )


def make_project_evaluate() -> Evaluate:
    """An adapter over the project's one evaluator, ``default_evaluator()``. A case's ``base`` type path types its
    input (``QuestionnaireResponse.item``)."""
    fhirpath = project_fhirpath()
    evaluator = fhirpath.default_evaluator()

    def plain(item: Any) -> Any:
        kind = evaluator.type_name(item)
        value = evaluator.to_json(item)
        if kind == "Quantity" and isinstance(value, dict) and "value" in value:
            unit = value.get("unit") or value.get("code") or "1"
            code = value.get("code") or unit
            form = calendar_unit(unit) if calendar_unit(unit) and code != unit else f"'{code}'"
            return Quantity(Decimal(str(value["value"])), form)
        if kind in ("date", "dateTime", "instant", "time") and isinstance(value, str):
            return Temporal(value)
        return value

    def wrap(value: Any) -> Any:
        if isinstance(value, dict):
            return evaluator.node(value)
        if isinstance(value, list):
            return [wrap(item) for item in value]
        return value

    def evaluate(expression: str, resource: Any, env: dict, **options: Any) -> list:
        ctx = _project_context(fhirpath)
        focus = wrap(resource)
        if options.get("base") and isinstance(resource, dict):
            focus = fhirpath.Node(resource, options["base"])
        variables = {name: wrap(value) for name, value in env.items()}
        if options.get("context") is not None:
            found = evaluator.compile(options["context"])(dict(variables), ctx, focus)
            variables["context"] = found[0] if found else []
        compiled = evaluator.compile(expression)
        return [plain(item) for item in compiled(variables, ctx, focus)]

    return evaluate


def project_evaluate(expression: str, resource: Any, env: dict, **options: Any) -> list:
    """The project's evaluator (``default_evaluator()``), made once."""
    global _PROJECT
    if _PROJECT is None:
        _PROJECT = make_project_evaluate()
    return _PROJECT(expression, resource, env, **options)


_PROJECT: Evaluate | None = None


def evaluator_named(name: str) -> Evaluate:
    if name == "project":
        return project_evaluate
    if name == "fhirpathpy":
        return fhirpathpy_evaluate
    if name == "fhirpathpy-published":
        return fhirpathpy_published_evaluate
    raise ValueError(f"unknown evaluator {name!r}")


# ---------------------------------------------------------------- recorded results


def load_expected_failures() -> dict[str, dict]:
    """expected-failures.json: case id -> {"category": "a"|"b", "reason": ..., ["section": ...]}."""
    with EXPECTED_FAILURES_FILE.open(encoding="utf-8") as f:
        return json.load(f)["failures"]


def fhirpathpy_passes(cases: list[dict]) -> dict[str, bool]:
    """Plain fhirpathpy's outcome per case id (computed: about 2 s for all cases)."""
    return {o.case_id: o.passed for o in run_all(cases, fhirpathpy_evaluate)}


# ---------------------------------------------------------------- command line


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluator", default="project", choices=("project", "fhirpathpy", "fhirpathpy-published"))
    parser.add_argument("--failures", action="store_true", help="list the failing case ids")
    parser.add_argument("--gaps", metavar="FILE", help="write the cases fhirpathpy passes and the evaluator fails")
    args = parser.parse_args(argv)
    cases = load_cases()
    started = time.perf_counter()
    evaluate = evaluator_named(args.evaluator)
    outcomes = run_all(cases, evaluate)
    seconds = time.perf_counter() - started
    totals: Counter = Counter()
    passes: Counter = Counter()
    for outcome in outcomes:
        totals[group_of(outcome.case_id)] += 1
        passes[group_of(outcome.case_id)] += outcome.passed
    for group in totals:
        print(f"{group:36} {passes[group]:5}/{totals[group]}")
    print(f"{'total (' + args.evaluator + ')':36} {sum(passes.values()):5}/{len(outcomes)}   {seconds:.1f} s")
    if args.failures:
        for outcome in outcomes:
            if not outcome.passed:
                print(f"FAIL {outcome.case_id}\n     expected {_short(outcome.expected)}\n     got      {_short(outcome.got)}")
    if args.gaps:
        oracle = fhirpathpy_passes(cases)
        by_id = {case["id"]: case for case in cases}
        lines = []
        for outcome in outcomes:
            if oracle.get(outcome.case_id) and not outcome.passed:
                case = by_id[outcome.case_id]
                lines.append(
                    f"{outcome.case_id}\n  expression: {case['expression']}\n  expected:   {_short(outcome.expected)}\n  got:        {_short(outcome.got)}\n"
                )
        Path(args.gaps).write_text("".join(lines), encoding="utf-8")
        print(f"{len(lines)} cases fhirpathpy passes and {args.evaluator} fails: written to {args.gaps}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
