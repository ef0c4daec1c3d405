"""The ``apply`` sub-command: a Bundle of patient data or a CDS Hooks request body in, a CarePlan (or R5 Bundle) out."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

import protocol.engine.apply
from service.cli import main
from tests.cds_support import engine
from tests.patients import CYCLOBENZAPRINE_10, DATA, RXNORM, SERTRALINE, Patient, concept

__all__ = ["engine"]

SANDBOX = DATA / "sandbox-requests"
AT = "2026-11-25T10:00:00Z"


@pytest.fixture
def reuse_engine(engine, monkeypatch):
    """Let the command use the module's compiled engine instead of compiling the content again."""
    monkeypatch.setattr(protocol.engine.apply, "Engine", lambda content, *args, **kwargs: engine)


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def run(args: list[str], capsys) -> tuple[int, object, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 and captured.out.strip() else None), captured.err


def contained_of(careplan: dict, resource_type: str) -> list[dict]:
    return [r for r in careplan["contained"] if r["resourceType"] == resource_type]


def actions(group: dict) -> list[dict]:
    out = []
    for action in group.get("action") or []:
        out.append(action)
        out.extend(actions(action))
    return out


def severe_patient() -> Patient:
    patient = Patient(45)
    patient.spasm(20)
    return patient


def sandbox_body(name: str) -> dict:
    return copy.deepcopy(json.loads((SANDBOX / name).read_text())["body"])


def spasm_searchset(patient_id: str) -> dict:
    """The sandbox's conditions prefetch, given a severe back spasm that began 20 hours before the clock."""
    patient = Patient(45, patient_id=patient_id)
    condition = patient.spasm(20)
    condition["id"] = "spasm-1"
    return {"resourceType": "Bundle", "type": "searchset", "total": 1,
            "entry": [{"fullUrl": f"http://127.0.0.1:8091/fhir/Condition/{condition['id']}", "resource": condition}]}


# ---------------------------------------------------------------------------------- a Bundle of patient data


def test_apply_on_a_bundle_file_writes_the_careplan(tmp_path, capsys):
    """This one compiles the shipped content itself, as the command does."""
    patient = severe_patient()
    data = write(tmp_path, "patient.json", patient.bundle("collection"))
    out = tmp_path / "careplan.json"
    code, _, err = run(["apply", "--data", str(data), "--at", AT, "--out", str(out)], capsys)
    assert code == 0, err
    careplan = json.loads(out.read_text())
    assert careplan["resourceType"] == "CarePlan" and careplan["subject"] == {"reference": f"Patient/{patient.id}"}
    meds = contained_of(careplan, "MedicationRequest")
    assert meds and all(m["medicationCodeableConcept"]["coding"][0]["code"] == "828320" for m in meds)
    group = contained_of(careplan, "RequestGroup")[0]
    assert {"phase-plan", "phase-1", "phase-1-heat", "cyclobenzaprine-proposal"} <= {a["id"] for a in actions(group)}


def test_at_sets_the_clock(tmp_path, capsys, reuse_engine):
    data = write(tmp_path, "patient.json", severe_patient().bundle())
    _, early, _ = run(["apply", "--data", str(data), "--at", AT], capsys)
    _, later, _ = run(["apply", "--data", str(data), "--at", "2026-12-01"], capsys)
    ids = lambda cp: {a["id"] for a in actions(contained_of(cp, "RequestGroup")[0])}  # noqa: E731
    assert "phase-1" in ids(early) and "phase-2" in ids(later)
    assert early["created"].startswith("2026-11-25") and later["created"].startswith("2026-12-01")


def test_plan_option_names_the_plan_by_id_or_canonical(tmp_path, capsys, reuse_engine, engine):
    data = write(tmp_path, "patient.json", severe_patient().bundle())
    plan = engine.plan("back-spasm-treatment-pathway").resource
    by_default = run(["apply", "--data", str(data), "--at", AT], capsys)[1]
    by_id = run(["apply", "--data", str(data), "--at", AT, "--plan", "back-spasm-treatment-pathway"], capsys)[1]
    by_url = run(["apply", "--data", str(data), "--at", AT, "--plan", plan["url"]], capsys)[1]
    for careplan in (by_default, by_id, by_url):
        assert careplan["instantiatesCanonical"] == [f"{plan['url']}|{plan['version']}"]
        assert {r["id"] for r in careplan["contained"]} == {r["id"] for r in by_default["contained"]}


def test_r5_writes_a_bundle_with_the_request_orchestration_first(tmp_path, capsys, reuse_engine):
    data = write(tmp_path, "patient.json", severe_patient().bundle())
    code, bundle, _ = run(["apply", "--data", str(data), "--at", AT, "--r5"], capsys)
    assert code == 0 and bundle["resourceType"] == "Bundle"
    assert bundle["entry"][0]["resource"]["resourceType"] == "RequestOrchestration"
    orders = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
    assert orders and all(o["medication"]["concept"]["coding"][0]["code"] == "828320" for o in orders)


def test_a_bundle_without_a_patient_is_an_error(tmp_path, capsys, reuse_engine):
    patient = severe_patient()
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in patient.resources if r["resourceType"] != "Patient"]}
    code, _, err = run(["apply", "--data", str(write(tmp_path, "no-patient.json", bundle)), "--at", AT], capsys)
    assert code == 1
    assert "Patient" in err


def test_an_unknown_plan_is_an_error(tmp_path, capsys, reuse_engine):
    data = write(tmp_path, "patient.json", severe_patient().bundle())
    code, _, err = run(["apply", "--data", str(data), "--at", AT, "--plan", "no-such-plan"], capsys)
    assert code == 1 and "no-such-plan" in err


# ---------------------------------------------------------------------------------- CDS Hooks request bodies


def test_sandbox_patient_view_with_a_back_spasm(tmp_path, capsys, reuse_engine):
    body = sandbox_body("patient-view.json")
    patient_id = body["context"]["patientId"]
    body["prefetch"]["conditions"]["entry"].extend(spasm_searchset(patient_id)["entry"])
    code, careplan, err = run(["apply", "--data", str(write(tmp_path, "hook.json", body)), "--at", AT], capsys)
    assert code == 0, err
    assert careplan["subject"] == {"reference": f"Patient/{patient_id}"}
    assert careplan["author"] == {"reference": body["context"]["userId"]}
    group = contained_of(careplan, "RequestGroup")[0]
    assert [a["id"] for a in group["action"]] == ["phase-plan", "cyclobenzaprine-proposal"]


def test_sandbox_patient_view_as_sent_is_out_of_scope(tmp_path, capsys, reuse_engine):
    body = sandbox_body("patient-view.json")
    code, careplan, _ = run(["apply", "--data", str(write(tmp_path, "hook.json", body)), "--at", AT], capsys)
    assert code == 0
    assert "action" not in contained_of(careplan, "RequestGroup")[0]


def test_sandbox_order_select_with_a_cyclobenzaprine_draft(tmp_path, capsys, reuse_engine):
    body = sandbox_body("order-select-with-medication.json")
    patient_id = body["context"]["patientId"]
    body["prefetch"] = {"patient": sandbox_body("patient-view.json")["prefetch"]["patient"], "conditions": spasm_searchset(patient_id)}
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["medicationCodeableConcept"] = concept(CYCLOBENZAPRINE_10, text=CYCLOBENZAPRINE_10[2])
    draft["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = 3
    draft.pop("reasonCode", None)
    code, careplan, err = run(["apply", "--data", str(write(tmp_path, "hook.json", body)), "--at", AT], capsys)
    assert code == 0, err
    group = contained_of(careplan, "RequestGroup")[0]
    assert [a["id"] for a in group["action"]] == ["draft-course-too-long"]
    (update,) = contained_of(careplan, "MedicationRequest")
    assert update["id"] == draft["id"]
    assert update["medicationCodeableConcept"]["coding"][0] == {"system": RXNORM, "code": CYCLOBENZAPRINE_10[1],
                                                                "display": CYCLOBENZAPRINE_10[2]}
    assert update["dispenseRequest"]["expectedSupplyDuration"]["value"] == 21


def test_sandbox_order_sign_of_metformin_gets_nothing(tmp_path, capsys, reuse_engine):
    body = sandbox_body("order-sign.json")
    body["prefetch"]["conditions"] = spasm_searchset(body["context"]["patientId"])
    code, careplan, _ = run(["apply", "--data", str(write(tmp_path, "hook.json", body)), "--at", AT], capsys)
    assert code == 0
    assert "action" not in contained_of(careplan, "RequestGroup")[0]


def test_order_sign_with_two_drafts_gives_one_result_per_draft(tmp_path, capsys, reuse_engine):
    patient = severe_patient()
    drafts = [patient.draft_medication(CYCLOBENZAPRINE_10, days=30, draft_id="rx-1"),
              patient.draft_medication(CYCLOBENZAPRINE_10, days=14, draft_id="rx-2")]
    body = {"hook": "order-sign", "hookInstance": "0b1e3f0e-0d8a-4f61-9a52-4b6f3d1a2c11",
            "context": {"patientId": patient.id, "userId": "Practitioner/dr-1",
                        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}},
            "prefetch": {"patient": patient.patient, "conditions": patient.bundle()}}
    code, out, _ = run(["apply", "--data", str(write(tmp_path, "hook.json", body)), "--at", AT], capsys)
    assert code == 0 and isinstance(out, list) and len(out) == 2
    first, second = ({a["id"] for a in contained_of(c, "RequestGroup")[0].get("action") or []} for c in out)
    assert first == {"draft-course-too-long"}, "the first of two drafts is the one kept"
    assert second == {"draft-duplicate"}, "the later draft is the duplicate"


def test_hook_without_a_patient_id_is_an_error(tmp_path, capsys, reuse_engine):
    body = sandbox_body("patient-view.json")
    del body["context"]["patientId"]
    code, _, err = run(["apply", "--data", str(write(tmp_path, "hook.json", body)), "--at", AT], capsys)
    assert code == 1 and "patientId" in err


# ---------------------------------------------------------------------------------- standard output stays JSON


def test_warnings_go_to_stderr_and_stdout_is_only_the_json(tmp_path):
    """The installed command in its own process, as a script pipes it: stdout parses as JSON whole, every warning
    line is on stderr."""
    patient = severe_patient()
    patient.medication(SERTRALINE)
    data = write(tmp_path, "patient.json", patient.bundle("collection"))
    proc = subprocess.run([sys.executable, "-m", "service.cli", "apply", "--data", str(data), "--at", AT],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    careplan = json.loads(proc.stdout)
    assert careplan["resourceType"] == "CarePlan"
    assert proc.stdout.lstrip().startswith("{") and proc.stdout.rstrip().endswith("}")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings and any("sertraline" in line.lower() for line in warnings), proc.stderr
    assert not any(line.startswith(("warning: ", "critical: ")) for line in proc.stdout.splitlines())
