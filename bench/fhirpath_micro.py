"""Micro-benchmark of compiled FHIRPath expressions evaluated by the engine (protocol.engine.fhirpath).

Prints, for each case, the median and 99th percentile of one evaluation in milliseconds
(compilation is done once, outside the measured loop, as the engine does at load time), and beside
them the median cost of the same case with plain ``fhirpathpy.evaluate`` (R4 model), which parses and
interprets the expression at every call, as a library user would call it (its results are not checked
here: it reads date/times as strings).

The "Library" cases use the content's Library over a small synthetic patient, with
ValueSet membership answered from the content's expansions:

- "all N Library variables" evaluates every variable in order, each seeing the results
  of the earlier ones: roughly the FHIRPath share of one request that needs them all;
- "on demand: ..." evaluates only what a decision needs, through a mapping that computes
  each variable when an expression first reads it (as the engine's scope does).

``--root DIR`` measures the engine of another checkout (its ``protocol`` package) instead of this one,
for before/after comparisons, e.g.::

    mkdir /tmp/before && git archive HEAD~1 protocol | tar -x -C /tmp/before
    python bench/fhirpath_micro.py --root /tmp/before --runs 1000
    python bench/fhirpath_micro.py --runs 1000

``--fhirpathpy-runs N`` sets the evaluations measured with fhirpathpy per case (0: leave it out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
CONTENT = ROOT / "protocol" / "content" / "back-spasm"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def _condition(ident: str, code: str, onset: str) -> dict:
    """A small Condition like the ones in a patient record."""
    return {
        "resourceType": "Condition",
        "id": ident,
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"coding": [{"system": SNOMED, "code": code, "display": "x"}]},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": onset,
    }


def _ago(**delta) -> str:
    """The benchmark clock minus a duration, as FHIR dateTime text."""
    return (NOW - timedelta(**delta)).isoformat()


def _medication_request(ident: str, code: str, text: str, **extra) -> dict:
    """An active MedicationRequest coded with RxNorm."""
    return {
        "resourceType": "MedicationRequest",
        "id": ident,
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}], "text": text},
        "authoredOn": "2026-09-01",
        **extra,
    }


def _library_inputs(evaluator) -> dict[str, list]:
    """The Library's input variables for a small patient: a recent severe back spasm and a few findings."""
    spasm = {
        **_condition("spasm", "203095000", _ago(hours=20)),
        "code": {"coding": [{"system": ICD10, "code": "M62.830", "display": "Muscle spasm of back"}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
        "severity": {"coding": [{"system": SNOMED, "code": "24484000", "display": "Severe"}]},
    }
    old_spasm = {
        **_condition("old-spasm", "203095000", "2024-03-02"),
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "resolved"}]},
        "abatementDateTime": "2024-03-20",
    }
    hepatic = {**_condition("hepatitis", "x", "2019-02-01"), "code": {"coding": [{"system": ICD10, "code": "B18.1"}]}}
    pain = [
        {
            "resourceType": "Observation",
            "id": f"pain-{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "38208-5"}]},
            "effectiveDateTime": _ago(hours=hours),
            "valueQuantity": {"value": score, "unit": "{score}"},
        }
        for i, (hours, score) in enumerate([(30, 5), (3, 8)])
    ]
    draft = _medication_request(
        "draft",
        "828319",
        "cyclobenzaprine 5 mg tablet",
        status="draft",
        authoredOn=NOW.date().isoformat(),
        dosageInstruction=[
            {
                "timing": {
                    "repeat": {
                        "frequency": 3,
                        "period": 1,
                        "periodUnit": "d",
                        "boundsDuration": {"value": 7, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"},
                    }
                },
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
            }
        ],
        dispenseRequest={"quantity": {"value": 21, "unit": "tablet"}},
    )
    procedure = {
        "resourceType": "Procedure",
        "id": "pt",
        "status": "completed",
        "code": {"coding": [{"system": SNOMED, "code": "229064008"}]},
        "performedDateTime": "2026-10-02T09:00:00Z",
    }
    nodes = {
        "spasmConditions": [spasm, old_spasm],
        "mildHepaticConditions": [hepatic],
        "painObservations": pain,
        "serotonergicRequests": [_medication_request("sertraline", "104849", "sertraline 50 mg")],
        "cnsDepressantRequests": [_medication_request("alprazolam", "1010600", "alprazolam")],
        "ptProcedures": [procedure],
        "draftOrder": [draft],
        "draftOrders": [draft],
    }
    inputs = {name: [evaluator.node(r) for r in resources] for name, resources in nodes.items()}
    inputs["patient"] = [evaluator.node({"resourceType": "Patient", "id": "p1", "birthDate": "1980-05-17"})]
    return inputs


def _library_case(evaluator):
    """The compiled Library variables, in order, and the patient's input variables."""
    library = json.loads((CONTENT / "Library-back-spasm-logic.json").read_text())
    variables = [
        (ext["valueExpression"]["name"], evaluator.compile(ext["valueExpression"]["expression"]))
        for ext in library.get("extension", [])
        if ext.get("url", "").endswith("/variable")
    ]
    inputs = _library_inputs(evaluator)
    for _, compiled in variables:
        for name in compiled.variables:
            inputs.setdefault(name, [])
    for name, _ in variables:
        inputs.pop(name, None)
    return variables, inputs


def _evaluate_library(variables, inputs, ctx) -> dict[str, list]:
    """Evaluate every Library variable in order; each sees the inputs and the earlier results."""
    values = dict(inputs)
    for name, compiled in variables:
        values[name] = compiled({v: values[v] for v in compiled.variables}, ctx)
    return values


class _Scope:
    """Library variables computed when first read, then kept (one instance per request)."""

    def __init__(self, variables, inputs: dict[str, list], ctx) -> None:
        self._compiled = dict(variables)
        self._values = dict(inputs)
        self._ctx = ctx

    def defines(self, name: str) -> bool:
        return name in self._values or name in self._compiled

    def get(self, name: str) -> list:
        """The value of a variable, evaluating its expression on first use."""
        if name not in self._values:
            compiled = self._compiled[name]
            self._values[name] = compiled(_ScopeView(self, compiled.variables), self._ctx)
        return self._values[name]


class _ScopeView(Mapping):
    """The env of one expression: the names it uses, each evaluated only when read."""

    def __init__(self, scope: _Scope, names: frozenset[str]) -> None:
        self._scope = scope
        self._names = names

    def __contains__(self, name: object) -> bool:
        return name in self._names and self._scope.defines(name)

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise KeyError(name)
        return self._scope.get(name)

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._names if self._scope.defines(name))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _on_demand(variables, inputs, ctx, wanted: tuple[str, ...]) -> dict[str, list]:
    """The wanted variables of a fresh scope (what one request computes for a decision)."""
    scope = _Scope(variables, inputs, ctx)
    return {name: scope.get(name) for name in wanted}


def _terminology(terminology: type) -> Any:
    """ValueSet membership from the expansions shipped with the content."""
    return terminology(json.loads(path.read_text()) for path in sorted(CONTENT.glob("ValueSet-*.json")))


def _cases(evaluator):
    """(label, compiled expression, env, focus) for each measured case."""
    patient = evaluator.node(
        {"resourceType": "Patient", "id": "p1", "birthDate": "1980-05-17", "gender": "female"}
    )
    conditions = [
        evaluator.node(_condition("c1", "45326000", "2026-11-23T08:00:00Z")),
        evaluator.node(_condition("c2", "38341003", "2019-02-01")),
        evaluator.node(_condition("c3", "44054006", "2015-06-30T10:00:00+02:00")),
    ]
    where = (
        "%conditions.where(clinicalStatus.coding.code = 'active' "
        "and code.coding.where(system = 'http://snomed.info/sct' and code = '45326000').exists())"
    )
    return [
        ("birthDate <= today() - 18 years", "%patient.birthDate <= today() - 18 years", {"patient": patient}),
        ("where() over 3 Conditions", where, {"conditions": conditions}),
        ("%onset > now() - 48 hours", "%onset > now() - 48 hours", {"onset": "2026-11-24T09:00:00+01:00"}),
        ("where() over empty list", where, {"conditions": []}),
    ]


def _load_fhirpath(root: Path):
    """protocol.engine.fhirpath (and the Terminology class) of the checkout at ``root``."""
    sys.path.insert(0, str(root))
    from protocol.engine import fhirpath
    from protocol.engine.terminology import Terminology

    return fhirpath, Terminology


class _Plain:
    """Plain fhirpathpy: ``fhirpathpy.evaluate`` with the R4 model, every call parsing the expression again."""

    def __init__(self) -> None:
        import fhirpathpy
        from fhirpathpy.models import models

        self._evaluate = fhirpathpy.evaluate
        self._model = models["r4"]
        self.errors = 0

    def evaluate(self, source: str, env: Mapping[str, Any], resource: Any = None) -> list:
        """One evaluation; an error (fhirpathpy fails on some of the content's date arithmetic) counts as empty."""
        try:
            return self._evaluate(resource if resource is not None else {}, source, dict(env), self._model)
        except Exception:
            self.errors += 1
            return []


def _plain_json(value: Any) -> Any:
    """An engine's raw value as the JSON plain fhirpathpy is given as a variable."""
    data = getattr(value, "data", value)
    return getattr(data, "text", data)


def _measure(run, args) -> tuple[list[float], Any]:
    """Warm up, then time ``run`` args.runs times: sorted samples in ms and the last result."""
    for _ in range(args.warmup):
        run()
    samples = []
    result = None
    for _ in range(args.runs):
        start = time.perf_counter_ns()
        result = run()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return sorted(samples), result


def _report(label: str, samples: list[float], plain: list[float] | None, shown: Any) -> None:
    """Print median and p99 of one case, the median of plain fhirpathpy beside them, and the result."""
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    other = f"{statistics.median(plain):12.3f}" if plain else f"{'-':>12}"
    print(f"{label:40} {statistics.median(samples):10.3f} {p99:10.3f} {other}   {shown}")


def _measure_plain(run, args) -> list[float] | None:
    """Time ``run`` args.fhirpathpy_runs times (after a few warm-up calls): sorted samples in ms, or None."""
    if args.fhirpathpy_runs <= 0:
        return None
    for _ in range(min(args.warmup, 5)):
        run()
    samples = []
    for _ in range(args.fhirpathpy_runs):
        start = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return sorted(samples)


def _plain_library(plain: _Plain, variables, sources: dict[str, str], inputs: dict[str, list]) -> dict[str, list]:
    """Every Library variable in order with plain fhirpathpy, each seeing the earlier results."""
    values = {name: [_plain_json(v) for v in value] for name, value in inputs.items()}
    for name, compiled in variables:
        values[name] = plain.evaluate(sources[name], {v: values.get(v, []) for v in compiled.variables})
    return values


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print median / p99 per case, and plain fhirpathpy's median beside them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="measured evaluations per case")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured evaluations first")
    parser.add_argument("--fhirpathpy-runs", type=int, default=10, help="evaluations measured with plain fhirpathpy (0: none)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose engine is measured")
    args = parser.parse_args(argv)

    fhirpath, terminology = _load_fhirpath(args.root)
    evaluator = fhirpath.default_evaluator()
    plain = _Plain()
    print(f"evaluator: {type(evaluator).__module__}.{type(evaluator).__name__} ({args.root})")
    ctx = fhirpath.EvaluationContext(now=NOW, member_of=lambda coding, url: False, resolve=lambda reference: None)
    print(f"{'case':40} {'median ms':>10} {'p99 ms':>10} {'fhirpathpy ms':>12}   result")
    for label, source, env in _cases(evaluator):
        compiled = evaluator.compile(source)
        samples, result = _measure(lambda compiled=compiled, env=env: compiled(env, ctx), args)
        plain_env = {name: [_plain_json(v) for v in (value if isinstance(value, list) else [value])] for name, value in env.items()}
        plain_samples = _measure_plain(lambda source=source, plain_env=plain_env: plain.evaluate(source, plain_env), args)
        shown = [evaluator.to_json(item) for item in result]
        if shown and isinstance(shown[0], dict):
            shown = [item.get("id") for item in shown]
        _report(label, samples, plain_samples, shown)

    def show(values: dict[str, list]) -> dict[str, list]:
        return {name: [evaluator.to_json(item) for item in value] for name, value in values.items()}

    variables, inputs = _library_case(evaluator)
    library = json.loads((CONTENT / "Library-back-spasm-logic.json").read_text())
    sources = {ext["valueExpression"]["name"]: ext["valueExpression"]["expression"]
               for ext in library.get("extension", []) if ext.get("url", "").endswith("/variable")}
    library_ctx = fhirpath.EvaluationContext(
        now=NOW, member_of=_terminology(terminology).member_of, resolve=lambda reference: None
    )
    samples, values = _measure(lambda: _evaluate_library(variables, inputs, library_ctx), args)
    plain_samples = _measure_plain(lambda: _plain_library(plain, variables, sources, inputs), args)
    _report(f"all {len(variables)} Library variables", samples, plain_samples, show({"phase": values["phase"]}))

    decision = ("inScope", "proposeCyclobenzaprine")
    no_spasm = {**inputs, "spasmConditions": []}
    for label, patient in (("on demand: decision, back spasm", inputs), ("on demand: decision, no spasm", no_spasm)):
        samples, values = _measure(lambda p=patient: _on_demand(variables, p, library_ctx, decision), args)
        _report(label, samples, None, show(values))
    if plain.errors:
        print(f"(plain fhirpathpy raised {plain.errors} times; those evaluations count as empty)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
