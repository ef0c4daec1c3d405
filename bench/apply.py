"""Benchmark: in-process patient-view $apply of the treatment pathway over a realistic record.

Builds a record of N resources (default 200: conditions, medications, observations, procedures,
encounters) from a Synthea patient of tests/data/synthea, with an active back spasm (onset 20 hours
before the clock, severe), a recent pain score and an active sertraline prescription added, and reports
p50/p99 of ``Engine.apply`` + ``careplan_r4`` over many runs, next to a plain ``json.loads`` of the same data.
Several sizes show how the cost grows with the number of resources.

    python bench/apply.py [--runs 1000] [--sizes 50,100,200,400]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.engine.apply import Engine  # noqa: E402
from protocol.engine.content import load_content  # noqa: E402
from protocol.engine.output import careplan_r4  # noqa: E402

SYNTHEA = ROOT / "tests" / "data" / "synthea"
SOURCES = ["chronic-pain-ankle-sprain-physical-therapy.json", "whiplash-opioids-physical-therapy.json",
           "whiplash-chronic-pain-older-adult.json", "whiplash-ankle-sprain-young-adult.json"]
KEEP = ("Condition", "MedicationRequest", "Observation", "Procedure", "Encounter")
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
SCT = "http://snomed.info/sct"


def protocol_resources(patient_id: str) -> list[dict]:
    """What the protocol looks for: an active severe back spasm, a recent pain score, a serotonergic drug."""
    subject = {"reference": f"Patient/{patient_id}"}
    return [
        {"resourceType": "Condition", "id": "bench-spasm", "subject": subject,
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
         "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M62.830", "display": "Muscle spasm of back"}]},
         "severity": {"coding": [{"system": SCT, "code": "24484000", "display": "Severe"}]},
         "onsetDateTime": (NOW - timedelta(hours=20)).isoformat()},
        {"resourceType": "Observation", "id": "bench-pain", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
         "effectiveDateTime": (NOW - timedelta(hours=3)).isoformat(), "valueQuantity": {"value": 8, "unit": "{score}"}},
        {"resourceType": "MedicationRequest", "id": "bench-sertraline", "status": "active", "intent": "order", "subject": subject,
         "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "312941",
                                                    "display": "Sertraline 50 MG Oral Tablet"}]},
         "authoredOn": "2026-09-01"},
    ]


def build_record(size: int) -> list[dict]:
    """A Patient plus size - 1 resources: Synthea history, then the protocol's own resources."""
    patient = None
    history: list[dict] = []
    for name in SOURCES:
        bundle = json.loads((SYNTHEA / name).read_text())
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Patient" and patient is None:
                patient = resource
            elif resource["resourceType"] in KEEP:
                history.append(resource)
    added = protocol_resources(patient["id"])
    body = history[: size - 1 - len(added)] + added
    patient = dict(patient, birthDate="1981-05-01")
    return [patient, *body]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(engine: Engine, record: list[dict], runs: int) -> dict[str, float]:
    payload = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in record]}).encode()
    patient_id = record[0]["id"]
    for _ in range(20):
        careplan_r4(engine.apply("back-spasm-treatment-pathway", json.loads(payload), NOW, patient_id))
    apply_ms, parse_ms = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        data = json.loads(payload)
        t1 = time.perf_counter()
        careplan_r4(engine.apply("back-spasm-treatment-pathway", data, NOW, patient_id))
        t2 = time.perf_counter()
        parse_ms.append((t1 - t0) * 1000)
        apply_ms.append((t2 - t1) * 1000)
    return {"kb": len(payload) / 1024, "apply_p50": statistics.median(apply_ms), "apply_p99": percentile(apply_ms, 0.99),
            "loads_p50": statistics.median(parse_ms), "loads_p99": percentile(parse_ms, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--sizes", default="50,100,200,400")
    args = parser.parse_args()
    t0 = time.perf_counter()
    engine = Engine(load_content())
    print(f"content loaded and compiled in {(time.perf_counter() - t0) * 1000:.0f} ms")
    # as the service does before its workers fork: the long-lived compiled content is left out of GC scans
    gc.collect()
    gc.freeze()
    record = build_record(200)
    sample = engine.apply("back-spasm-treatment-pathway", record, NOW, record[0]["id"])
    print("cards (top-level actions):", ", ".join(a.fields.get("id", "?") for a in sample.actions), "| issues:", len(sample.issues))
    print(f"{'resources':>9} {'KB':>6} {'apply p50':>10} {'apply p99':>10} {'json.loads p50':>15} {'p99':>7}")
    for size in (int(s) for s in args.sizes.split(",")):
        m = measure(engine, build_record(size), args.runs)
        print(f"{size:>9} {m['kb']:>6.0f} {m['apply_p50']:>9.2f}ms {m['apply_p99']:>9.2f}ms {m['loads_p50']:>14.2f}ms {m['loads_p99']:>6.2f}ms")


if __name__ == "__main__":
    main()
