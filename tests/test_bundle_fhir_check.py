"""The transaction Bundle of the artifacts passes the independent R4 checker: validation and import."""

from __future__ import annotations

from protocol.engine.bundle import artifact_bundle
from protocol.engine.content import load_content
from tests.fhir_check import fhir_check


def _errors(report):
    return [(item["target"], issue) for f in report.get("files", []) for item in f["items"]
            for issue in item["issues"] if issue.get("severity") == "error"]


def test_transaction_bundle_validates_with_zero_errors(tmp_path):
    code, report = fhir_check(data=artifact_bundle(load_content()), tmp_path=tmp_path)
    assert _errors(report) == [] and code == 0, report


def test_transaction_bundle_imports_with_every_canonical_resolved(tmp_path):
    content = load_content()
    code, report = fhir_check("--import", data=artifact_bundle(content), tmp_path=tmp_path)
    assert code == 0, report
    assert report["accepted"] is True and report["errors"] == []
    assert report["created"] == report["readBack"] == len(content.resources)
    assert report["canonicals"] > 0
