#!/usr/bin/env python3
"""Write the example CDS Hooks requests and the example patient Bundle of this folder.

The service reads the real clock, and a back spasm that began "20 hours ago" is only 20 hours old on the day it
was written: the request bodies are written for a moment (``--now``, default: now), with every date of the record
counted back from it, and the Patient's ``meta.lastUpdated`` says which moment that was. The Bundle for ``apply``
is written for a fixed moment instead (``APPLY_AT``), which ``apply --at`` sets as the clock, so it never ages.

    python examples/make_examples.py                  # rewrite every example for now
    python examples/make_examples.py --now 2026-11-25T10:00:00Z --out /tmp/examples

Standard library only; the codes are those of the protocol's ValueSets (protocol/content/back-spasm).
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: The clock of the ``apply`` example: ``back-spasm-cds apply --at 2026-11-25T10:00:00Z``.
APPLY_AT = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)

SCT = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"

SPASM = [(ICD10CM, "M62.830", "Muscle spasm of back"), (SCT, "203095000", "Spasm of back muscles")]
SEVERE = (SCT, "24484000", "Severe (severity modifier) (qualifier value)")
MODERATE = (SCT, "6736007", "Moderate (severity modifier) (qualifier value)")
CHRONIC_LOW_BACK_PAIN = (SCT, "278860009", "Chronic low back pain")
MOVEMENT_THERAPY = (SCT, "229064008", "Movement therapy (regime/therapy)")
PAIN_NRS = (LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported")
PHENELZINE = (RXNORM, "312347", "Phenelzine 15 MG Oral Tablet")
SERTRALINE = (RXNORM, "312941", "Sertraline 50 MG Oral Tablet")
LISINOPRIL = (RXNORM, "314076", "lisinopril 10 MG Oral Tablet")
CYCLOBENZAPRINE_5 = (RXNORM, "828320", "Cyclobenzaprine hydrochloride 5 MG Oral Tablet")
CYCLOBENZAPRINE_10 = (RXNORM, "828348", "Cyclobenzaprine hydrochloride 10 MG Oral Tablet")

#: The prefetch keys every service of back-spasm-cds advertises in its discovery answer, with the resource type
#: each one reads. A request that fills every key needs no FHIR server.
PREFETCH = {
    "patient": "Patient", "allergyIntolerance": "AllergyIntolerance", "carePlan": "CarePlan", "condition": "Condition",
    "encounter": "Encounter", "medicationAdministration": "MedicationAdministration", "medicationRequest": "MedicationRequest",
    "medicationStatement": "MedicationStatement", "observation": "Observation", "procedure": "Procedure",
    "serviceRequest": "ServiceRequest",
}
SERVICES = {
    "patient-view": "back-spasm-treatment-pathway-patient-view",
    "order-sign": "back-spasm-order-review-order-sign",
}
USER = "Practitioner/example-clinician"


def instant(moment: datetime) -> str:
    """A FHIR dateTime to the second, in UTC."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def concept(*codes: tuple[str, str, str], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codes]}
    if text:
        out["text"] = text
    return out


def born(now: datetime, age: int) -> str:
    """A birth date that makes the patient ``age`` at ``now`` and for months after (the birthday was about 100 days
    before ``now``), so that a request keeps its patient's age group while it is used."""
    day = (now - timedelta(days=100)).date()
    return day.replace(year=day.year - age, day=min(day.day, 28)).isoformat()


class Record:
    """One patient's record as of ``now``: the Patient and what the EHR holds about them."""

    def __init__(self, now: datetime, patient_id: str, given: str, family: str, gender: str, age: int):
        self.now = now
        self.id = patient_id
        self.patient = {"resourceType": "Patient", "id": patient_id, "meta": {"lastUpdated": instant(now)},
                        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN-{patient_id}"}],
                        "name": [{"use": "official", "family": family, "given": [given]}], "gender": gender,
                        "birthDate": born(now, age)}
        self.resources: list[dict[str, Any]] = []

    @property
    def ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.id}"}

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        resource["id"] = f"{self.id}-{resource['resourceType'].lower()}-{len(self.resources) + 1}"
        self.resources.append(resource)
        return resource

    def condition(self, codes: list[tuple[str, str, str]], onset: datetime, severity: tuple[str, str, str] | None = None) -> None:
        """An active, confirmed problem-list condition with its onset, recorded at ``now``."""
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "clinicalStatus": concept(("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active")),
            "verificationStatus": concept(("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed")),
            "category": [concept(("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item"))],
            "code": concept(*codes), "subject": self.ref, "onsetDateTime": instant(onset), "recordedDate": instant(self.now)}
        if severity:
            resource["severity"] = concept(severity)
        self.add(resource)

    def physical_therapy(self, days_ago: int) -> None:
        """A completed physical-therapy session that many days ago."""
        start = self.now - timedelta(days=days_ago)
        self.add({"resourceType": "Procedure", "status": "completed", "code": concept(MOVEMENT_THERAPY), "subject": self.ref,
                  "performedPeriod": {"start": instant(start), "end": instant(start + timedelta(minutes=45))}})

    def pain_score(self, score: int, hours_ago: float) -> None:
        self.add({"resourceType": "Observation", "status": "final",
                  "category": [concept(("http://terminology.hl7.org/CodeSystem/observation-category", "survey", "Survey"))],
                  "code": concept(PAIN_NRS), "subject": self.ref, "effectiveDateTime": instant(self.now - timedelta(hours=hours_ago)),
                  "valueQuantity": {"value": score, "unit": "{score}", "system": UCUM, "code": "{score}"}})

    def medication(self, drug: tuple[str, str, str], days_ago: int, sig: str) -> None:
        """An active prescription started that many days ago."""
        self.add({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                  "medicationCodeableConcept": concept(drug, text=drug[2]), "subject": self.ref,
                  "authoredOn": (self.now - timedelta(days=days_ago)).date().isoformat(),
                  "dosageInstruction": [{"text": sig}]})

    def draft(self, drug: tuple[str, str, str], dose_mg: int, per_day: int, days: int, tablets: int) -> dict[str, Any]:
        """A cyclobenzaprine order as the EHR sends it on order-sign: draft, one dosage step, quantity to dispense."""
        return {"resourceType": "MedicationRequest", "id": f"{self.id}-draft-1", "status": "draft", "intent": "order",
                "medicationCodeableConcept": concept(drug, text=drug[2]), "subject": self.ref,
                "authoredOn": self.now.date().isoformat(), "requester": {"reference": USER},
                "dosageInstruction": [{
                    "text": f"{dose_mg} mg by mouth {per_day} times daily for {days} days",
                    "timing": {"repeat": {"boundsDuration": {"value": days, "unit": "days", "system": UCUM, "code": "d"},
                                          "frequency": per_day, "period": 1, "periodUnit": "d"}},
                    "route": concept((SCT, "26643006", "Oral route")),
                    "doseAndRate": [{"doseQuantity": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}]}],
                "dispenseRequest": {"numberOfRepeatsAllowed": 0,
                                    "quantity": {"value": tablets, "unit": "tablet", "system": UCUM, "code": "{tbl}"},
                                    "expectedSupplyDuration": {"value": days, "unit": "days", "system": UCUM, "code": "d"}}}

    def prefetch(self) -> dict[str, Any]:
        """Every prefetch key filled: the Patient, and one searchset Bundle of the patient's resources per key."""
        out: dict[str, Any] = {}
        for key, rtype in PREFETCH.items():
            if rtype == "Patient":
                out[key] = self.patient
                continue
            found = [r for r in self.resources if r["resourceType"] == rtype]
            out[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, r['id'])}", "resource": r} for r in found]}
        return out

    def bundle(self) -> dict[str, Any]:
        """The record as a collection Bundle, for ``back-spasm-cds apply --data``."""
        return {"resourceType": "Bundle", "id": f"{self.id}-record", "type": "collection", "timestamp": instant(self.now),
                "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, r['id'])}", "resource": r}
                          for r in [self.patient, *self.resources]]}


def hook_request(name: str, hook: str, record: Record, drafts: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """A CDS Hooks 2.0 request body, with the prefetch a complete EHR sends (no fhirServer needed)."""
    context: dict[str, Any] = {"userId": USER, "patientId": record.id}
    if hook == "order-sign":
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": d} for d in drafts]}
    return {"hook": hook, "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}|{instant(record.now)}")),
            "context": context, "prefetch": record.prefetch()}


def early_course(now: datetime) -> Record:
    """45, a severe back spasm that began 20 hours ago, pain 8/10 this morning, physical therapy 12 days ago."""
    record = Record(now, "example-early-course", "Dana", "Whitfield", "female", 45)
    record.condition(SPASM, now - timedelta(hours=20), SEVERE)
    record.pain_score(8, hours_ago=2)
    record.physical_therapy(days_ago=12)
    return record


def build(now: datetime) -> dict[str, dict[str, Any]]:
    """Every example, by file name, for the clock ``now`` (the apply Bundle for ``APPLY_AT``)."""
    examples: dict[str, dict[str, Any]] = {}

    examples["patient-view-early-course.json"] = hook_request("patient-view-early-course", "patient-view", early_course(now))

    record = Record(now, "example-on-phenelzine", "Marcus", "Okafor", "male", 52)
    record.condition(SPASM, now - timedelta(days=3), MODERATE)
    record.medication(PHENELZINE, days_ago=60, sig="15 mg by mouth three times daily")
    examples["order-sign-maoi.json"] = hook_request("order-sign-maoi", "order-sign", record,
                                                    [record.draft(CYCLOBENZAPRINE_5, 5, 3, 7, 21)])

    record = Record(now, "example-thirty-days", "Priya", "Nair", "female", 38)
    record.condition(SPASM, now - timedelta(days=2), SEVERE)
    record.physical_therapy(days_ago=20)
    examples["order-sign-30-days.json"] = hook_request("order-sign-30-days", "order-sign", record,
                                                       [record.draft(CYCLOBENZAPRINE_10, 10, 3, 30, 90)])

    record = Record(now, "example-older-adult", "Walter", "Brennan", "male", 72)
    record.condition(SPASM, now - timedelta(hours=30), SEVERE)
    record.medication(LISINOPRIL, days_ago=400, sig="10 mg by mouth once daily")
    examples["order-sign-older-adult.json"] = hook_request("order-sign-older-adult", "order-sign", record,
                                                           [record.draft(CYCLOBENZAPRINE_10, 10, 3, 10, 30)])

    record = Record(now, "example-out-of-scope", "Sam", "Delgado", "male", 34)
    record.condition([CHRONIC_LOW_BACK_PAIN], now - timedelta(days=900))
    record.physical_therapy(days_ago=40)
    examples["patient-view-out-of-scope.json"] = hook_request("patient-view-out-of-scope", "patient-view", record)

    record = Record(APPLY_AT, "example-apply", "Elena", "Marsh", "female", 45)
    record.condition(SPASM, APPLY_AT - timedelta(hours=20), SEVERE)
    record.physical_therapy(days_ago=12)
    record.medication(SERTRALINE, days_ago=200, sig="50 mg by mouth once daily")
    examples["apply-patient-bundle.json"] = record.bundle()
    return examples


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--now", default=None, help="the moment to write the requests for, ISO 8601 (default: now)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: this folder)")
    args = parser.parse_args(argv)
    now = datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else datetime.now(timezone.utc)
    if now.tzinfo is None:
        parser.error("--now needs an offset (for example 2026-11-25T10:00:00Z)")
    now = now.replace(microsecond=0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build(now).items():
        (args.out / name).write_text(render(data), encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
