"""Test patients: realistic FHIR R4 records built from the Synthea patients in tests/data or from scratch.

Every clinical code used here comes from the protocol's ValueSets (built from the terminology lists), and
the builders produce the shapes real systems send: SNOMED CT and ICD-10-CM codings, onsetDateTime,
onsetPeriod, onsetString or only recordedDate, MedicationRequest and MedicationStatement, with the drug
as a CodeableConcept or as a reference to a contained or separately supplied Medication.
"""

from __future__ import annotations

import copy
import itertools
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

CLOCK = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
#: The test data shipped with the project (tests/data/README.md says where each file comes from).
DATA = Path(__file__).resolve().parent / "data"
SYNTHEA = DATA / "synthea"

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

# Codes from the protocol's ValueSets (see protocol/content/back-spasm/ValueSet-*.json).
SPASM_ICD = (ICD, "M62.830", "Muscle spasm of back")
SPASM_SCT = (SCT, "203095000", "Spasm of back muscles")
SEVERE = (SCT, "24484000", "Severe (severity modifier) (qualifier value)")
MODERATE = (SCT, "6736007", "Moderate (severity modifier) (qualifier value)")
PAIN_NRS = (LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported")
CYCLOBENZAPRINE_5 = (RXNORM, "828320", "Cyclobenzaprine hydrochloride 5 MG Oral Tablet")
CYCLOBENZAPRINE_10 = (RXNORM, "828348", "Cyclobenzaprine hydrochloride 10 MG Oral Tablet")
CYCLOBENZAPRINE_7_5 = (RXNORM, "828299", "Cyclobenzaprine hydrochloride 7.5 MG Oral Tablet")
CYCLOBENZAPRINE_ER_15 = (RXNORM, "828358", "24 HR Cyclobenzaprine hydrochloride 15 MG Extended Release Oral Capsule")
CYCLOBENZAPRINE_ER_30 = (RXNORM, "828353", "24 HR Cyclobenzaprine hydrochloride 30 MG Extended Release Oral Capsule")
CYCLOBENZAPRINE_INGREDIENT = (RXNORM, "21949", "cyclobenzaprine")
PHENELZINE = (RXNORM, "312347", "Phenelzine 15 MG Oral Tablet")
LINEZOLID = (RXNORM, "311347", "linezolid 600 MG Oral Tablet")
SERTRALINE = (RXNORM, "312941", "Sertraline 50 MG Oral Tablet")
AMITRIPTYLINE = (RXNORM, "856783", "Amitriptyline Hydrochloride 10 MG Oral Tablet")
TRAMADOL = (RXNORM, "835605", "tramadol hydrochloride 50 MG Oral Tablet [Ultram]")
HEART_FAILURE = (SCT, "84114007", "Heart failure")
ATRIAL_FIBRILLATION = (ICD, "I48.91", "Unspecified atrial fibrillation")
HYPERTHYROIDISM = (SCT, "34486009", "Hyperthyroidism")
AV_BLOCK = (SCT, "233917008", "Atrioventricular block")
ACUTE_MI = (SCT, "57054005", "Acute myocardial infarction")
NSTEMI_ICD = (ICD, "I21.4", "Non-ST elevation (NSTEMI) myocardial infarction")
CIRRHOSIS = (SCT, "19943007", "Cirrhosis of liver")
ALCOHOLIC_CIRRHOSIS_ICD = (ICD, "K70.30", "Alcoholic cirrhosis of liver without ascites")
FATTY_LIVER = (ICD, "K76.0", "Fatty (change of) liver, not elsewhere classified")
CHRONIC_HEPATITIS_C = (SCT, "128302006", "Chronic hepatitis C")
TRICYCLIC_ALLERGY = (SCT, "293821002", "Tricyclic antidepressant drug allergy")
PT_PROCEDURE = (SCT, "91251008", "Physical therapy procedure")
MOVEMENT_THERAPY = (SCT, "229064008", "Movement therapy (regime/therapy)")
PT_EVALUATION = (CPT, "97161", "Physical therapy evaluation: low complexity")
PT_REFERRAL = (SCT, "306170007", "Referral to physiotherapy service (procedure)")
TENS_DEVICE = (HCPCS, "E0720", "Transcutaneous electrical nerve stimulation (TENS) device, two lead, localized stimulation")
LUMBAR_ORTHOSIS = (HCPCS, "L0625", "Lumbar orthosis, flexible")
LUMBOSACRAL_BELT = (SCT, "31174004", "Lumbosacral belt, device")
TRACTION = (CPT, "97012", "Application of a modality to 1 or more areas; traction, mechanical")
HEAT = (SCT, "266694003", "Heat therapy")

_ids = itertools.count(1)


def coding(code: tuple[str, str, str]) -> dict:
    system, value, display = code
    return {"system": system, "code": value, "display": display}


def concept(*codes: tuple[str, str, str], text: str | None = None) -> dict:
    out: dict[str, Any] = {"coding": [coding(c) for c in codes]}
    if text:
        out["text"] = text
    return out


def when(hours_ago: float | None = None, days_ago: float | None = None, now: datetime = CLOCK) -> str:
    """A dateTime that many hours or days before the clock (seconds precision, UTC)."""
    delta = timedelta(hours=hours_ago or 0, days=days_ago or 0)
    return (now - delta).isoformat(timespec="seconds").replace("+00:00", "Z")


def day(days_ago: int, now: datetime = CLOCK) -> str:
    """A date that many days before the clock."""
    return (now.date() - timedelta(days=days_ago)).isoformat()


def birth_date_for(age: int, now: datetime = CLOCK, days_after_birthday: int = 0) -> str:
    """Birth date of someone who turned ``age`` that many days before the clock's date."""
    today = now.date() - timedelta(days=days_after_birthday)
    try:
        born = today.replace(year=today.year - age)
    except ValueError:
        born = today.replace(year=today.year - age, day=28)
    return born.isoformat()


def synthea(name: str) -> list[dict]:
    """The resources of one Synthea patient of tests/data/synthea (transaction Bundle), with relative references restored."""
    bundle = json.loads((SYNTHEA / name).read_text())
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"] if e.get("fullUrl")}
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for full_url, ref in ids.items():
        text = text.replace(f'"{full_url}"', f'"{ref}"')
    return json.loads(text)


class Patient:
    """A record under construction: a Patient and the resources added to it."""

    def __init__(self, age: int = 45, *, patient_id: str = "pat-1", birth_date: str | None = None, base: list[dict] | None = None):
        self.resources: list[dict] = []
        patient = next((r for r in base or [] if r["resourceType"] == "Patient"), None)
        if patient is None:
            patient = {"resourceType": "Patient", "id": patient_id, "name": [{"family": "Example", "given": ["Alex"]}], "gender": "unknown"}
            base = base or []
        else:
            patient = copy.deepcopy(patient)
        patient["birthDate"] = birth_date or birth_date_for(age)
        self.id = patient["id"]
        self.patient = patient
        self.resources = [patient] + [copy.deepcopy(r) for r in base or [] if r["resourceType"] != "Patient"]

    @property
    def ref(self) -> dict:
        return {"reference": f"Patient/{self.id}"}

    def add(self, resource: dict) -> dict:
        resource.setdefault("id", f"{resource['resourceType'].lower()}-{next(_ids)}")
        self.resources.append(resource)
        return resource

    # -- conditions ------------------------------------------------------------------------------------
    def condition(self, code: tuple[str, str, str], *, onset: Any = "dateTime", onset_value: str | None = None,
                  status: str | None = "active", verification: str | None = "confirmed", severity: tuple | None = None,
                  abatement: str | None = None, recorded: str | None = None, extra_codes: tuple = ()) -> dict:
        resource: dict[str, Any] = {"resourceType": "Condition", "subject": self.ref, "code": concept(code, *extra_codes)}
        if status:
            resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": status}]}
        if verification:
            resource["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": verification}]}
        if severity:
            resource["severity"] = concept(severity)
        if onset_value is not None:
            if onset == "dateTime":
                resource["onsetDateTime"] = onset_value
            elif onset == "period":
                resource["onsetPeriod"] = {"start": onset_value}
            elif onset == "string":
                resource["onsetString"] = onset_value
        if recorded:
            resource["recordedDate"] = recorded
        if abatement:
            resource["abatementDateTime"] = abatement
        return self.add(resource)

    def spasm(self, hours_ago: float | None = 20, *, days_ago: float | None = None, severity: tuple | None = SEVERE,
              code: tuple = SPASM_ICD, onset: str = "dateTime", **kwargs) -> dict:
        """An active back muscle spasm with its onset that long ago (onset 'period', 'string', 'recorded' or 'none')."""
        moment = when(hours_ago=hours_ago if days_ago is None else 0, days_ago=days_ago)
        if onset == "recorded":
            return self.condition(code, severity=severity, recorded=moment, **kwargs)
        if onset == "none":
            return self.condition(code, severity=severity, **kwargs)
        return self.condition(code, onset=onset, onset_value=moment, severity=severity, **kwargs)

    def pain(self, score: float, hours_ago: float = 2, *, code: tuple = PAIN_NRS, as_integer: bool = False, status: str = "final") -> dict:
        resource = {"resourceType": "Observation", "status": status, "subject": self.ref,
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
                    "code": concept(code), "effectiveDateTime": when(hours_ago=hours_ago)}
        if as_integer:
            resource["valueInteger"] = int(score)
        else:
            resource["valueQuantity"] = {"value": score, "unit": "{score}", "system": UCUM, "code": "{score}"}
        return self.add(resource)

    # -- medications -------------------------------------------------------------------------------------
    def medication(self, code: tuple[str, str, str], *, kind: str = "request", status: str = "active", shape: str = "concept",
                   started_days_ago: int = 3, ended_days_ago: int | None = None, dosage: list | None = None) -> dict:
        """A MedicationRequest ('request') or MedicationStatement ('statement'); the drug as a CodeableConcept
        ('concept'), a contained Medication ('contained') or a separate Medication resource ('reference')."""
        rtype = "MedicationRequest" if kind == "request" else "MedicationStatement"
        resource: dict[str, Any] = {"resourceType": rtype, "status": status, "subject": self.ref}
        if shape == "concept":
            resource["medicationCodeableConcept"] = concept(code, text=code[2])
        elif shape == "contained":
            resource["contained"] = [{"resourceType": "Medication", "id": "med", "code": concept(code)}]
            resource["medicationReference"] = {"reference": "#med"}
        else:
            medication = self.add({"resourceType": "Medication", "code": concept(code)})
            resource["medicationReference"] = {"reference": f"Medication/{medication['id']}"}
        if kind == "request":
            resource["intent"] = "order"
            resource["authoredOn"] = day(started_days_ago)
            if ended_days_ago is not None:
                resource["dispenseRequest"] = {"validityPeriod": {"start": day(started_days_ago), "end": day(ended_days_ago)}}
            if dosage is not None:
                resource["dosageInstruction"] = dosage
        else:
            period: dict[str, str] = {"start": day(started_days_ago)}
            if ended_days_ago is not None:
                period["end"] = day(ended_days_ago)
            resource["effectivePeriod"] = period
            resource["dateAsserted"] = day(min(started_days_ago, ended_days_ago if ended_days_ago is not None else started_days_ago))
        return self.add(resource)

    def allergy(self, code: tuple[str, str, str], *, verification: str | None = "confirmed", clinical: str | None = "active") -> dict:
        resource: dict[str, Any] = {"resourceType": "AllergyIntolerance", "patient": self.ref, "code": concept(code)}
        if clinical:
            resource["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": clinical}]}
        if verification:
            resource["verificationStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": verification}]}
        return self.add(resource)

    # -- physical therapy ------------------------------------------------------------------------------------
    def physical_therapy(self, kind: str = "procedure", days_ago: int = 10) -> dict:
        if kind == "procedure":
            return self.add({"resourceType": "Procedure", "status": "completed", "subject": self.ref, "code": concept(MOVEMENT_THERAPY),
                             "performedPeriod": {"start": when(days_ago=days_ago), "end": when(days_ago=days_ago, hours_ago=-1)}})
        if kind == "service-request":
            return self.add({"resourceType": "ServiceRequest", "status": "completed", "intent": "order", "subject": self.ref,
                             "code": concept(PT_REFERRAL), "authoredOn": when(days_ago=days_ago)})
        if kind == "careplan":
            return self.add({"resourceType": "CarePlan", "status": "completed", "intent": "plan", "subject": self.ref,
                             "category": [concept(PT_PROCEDURE)], "period": {"start": day(days_ago + 14), "end": day(days_ago)}})
        return self.add({"resourceType": "Encounter", "status": "finished", "subject": self.ref,
                         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                         "type": [concept(PT_EVALUATION)], "period": {"start": when(days_ago=days_ago), "end": when(days_ago=days_ago, hours_ago=-1)}})

    # -- draft orders ----------------------------------------------------------------------------------------
    def draft_medication(self, code: tuple[str, str, str], *, dose_mg: float | None = None, tablets: float | None = 1,
                         per_day: int = 3, days: int | None = 21, supply_days: int | None = None, quantity: float | None = None,
                         shape: str = "concept", draft_id: str | None = None) -> dict:
        """A draft MedicationRequest as an EHR sends it on order-select/order-sign."""
        dose = ({"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"} if dose_mg is not None
                else {"value": tablets, "unit": "tablet", "system": UCUM, "code": "{tbl}"})
        repeat: dict[str, Any] = {"frequency": per_day, "period": 1, "periodUnit": "d"}
        if days is not None:
            repeat["boundsDuration"] = {"value": days, "unit": "days", "system": UCUM, "code": "d"}
        order: dict[str, Any] = {"resourceType": "MedicationRequest", "id": draft_id or f"draft-{next(_ids)}", "status": "draft",
                                 "intent": "order", "subject": self.ref, "authoredOn": CLOCK.date().isoformat(),
                                 "dosageInstruction": [{"timing": {"repeat": repeat}, "doseAndRate": [{"doseQuantity": dose}]}]}
        if shape == "concept":
            order["medicationCodeableConcept"] = concept(code, text=code[2])
        else:
            order["contained"] = [{"resourceType": "Medication", "id": "m", "code": concept(code)}]
            order["medicationReference"] = {"reference": "#m"}
        if supply_days is not None or quantity is not None:
            order["dispenseRequest"] = {}
            if supply_days is not None:
                order["dispenseRequest"]["expectedSupplyDuration"] = {"value": supply_days, "unit": "days", "system": UCUM, "code": "d"}
            if quantity is not None:
                order["dispenseRequest"]["quantity"] = {"value": quantity, "unit": "tablet", "system": UCUM, "code": "{tbl}"}
        return order

    def draft_service(self, code: tuple[str, str, str], *, resource_type: str = "ServiceRequest", draft_id: str | None = None) -> dict:
        order: dict[str, Any] = {"resourceType": resource_type, "id": draft_id or f"draft-{next(_ids)}", "status": "draft",
                                 "intent": "order", "subject": self.ref}
        if resource_type == "DeviceRequest":
            order["codeCodeableConcept"] = concept(code)
        else:
            order["code"] = concept(code)
        return order

    def bundle(self, bundle_type: str = "searchset") -> dict:
        return {"resourceType": "Bundle", "type": bundle_type, "entry": [{"resource": r} for r in self.resources]}
