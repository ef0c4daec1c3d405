"""Micro-benchmark of compiled FHIRPath expressions evaluated through protocol.fhirpath.

Prints, for each case, the median and 99th percentile of one evaluation in milliseconds
(compilation is done once, outside the measured loop, as the engine does at load time).

    python bench/fhirpath_micro.py --runs 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.fhirpath import EvaluationContext, default_evaluator  # noqa: E402

SNOMED = "http://snomed.info/sct"


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


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print median / p99 per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="measured evaluations per case")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured evaluations first")
    args = parser.parse_args(argv)

    evaluator = default_evaluator()
    ctx = EvaluationContext(
        now=datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc),
        member_of=lambda coding, url: False,
        resolve=lambda reference: None,
    )
    print(f"{'case':40} {'median ms':>10} {'p99 ms':>10}   result")
    for label, source, env in _cases(evaluator):
        compiled = evaluator.compile(source)
        for _ in range(args.warmup):
            compiled(env, ctx)
        samples = []
        for _ in range(args.runs):
            start = time.perf_counter_ns()
            result = compiled(env, ctx)
            samples.append((time.perf_counter_ns() - start) / 1e6)
        samples.sort()
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        shown = [evaluator.to_json(item) for item in result]
        if shown and isinstance(shown[0], dict):
            shown = [item.get("id") for item in shown]
        print(f"{label:40} {statistics.median(samples):10.3f} {p99:10.3f}   {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
