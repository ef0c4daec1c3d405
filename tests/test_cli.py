"""The back-spasm-cds command line: validate and bundle."""

from __future__ import annotations

import json
import shutil

from protocol.cli import main
from protocol.content import CONTENT_DIR, PUBLICATION_FILE, load_content


def test_validate_passes_on_the_shipped_content(capsys):
    assert main(["validate"]) == 0
    assert "OK: " in capsys.readouterr().out


def test_validate_lists_problems_and_exits_1(tmp_path, capsys):
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder)
    shutil.copy(PUBLICATION_FILE, tmp_path / "publication.json")
    path = folder / "ActivityDefinition-massage-therapy.json"
    ad = json.loads(path.read_text())
    ad["library"] = ["http://example.org/fhir/back-spasm-cds/Library/nowhere"]
    path.write_text(json.dumps(ad))
    assert main(["--content", str(folder), "validate"]) == 1
    err = capsys.readouterr().err
    assert "ActivityDefinition-massage-therapy.json: ActivityDefinition.library[0]:" in err
    assert err.startswith("1 problem(s) in ")


def test_validate_reports_a_missing_folder(tmp_path, capsys):
    assert main(["--content", str(tmp_path / "nowhere"), "validate"]) == 1
    assert "content folder not found" in capsys.readouterr().err


def test_transaction_bundle_puts_every_artifact_by_type_and_id(tmp_path):
    out = tmp_path / "tx.json"
    assert main(["bundle", "--out", str(out)]) == 0
    bundle = json.loads(out.read_text())
    content = load_content()
    assert bundle["type"] == "transaction"
    assert len(bundle["entry"]) == len(content.resources)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        assert entry["fullUrl"] == resource["url"]
    order = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert order.index("ValueSet") < order.index("Library") < order.index("ActivityDefinition") < order.index("PlanDefinition")


def test_collection_bundle_has_no_requests(capsys):
    assert main(["bundle", "--type", "collection"]) == 0
    bundle = json.loads(capsys.readouterr().out)
    assert bundle["type"] == "collection"
    assert all("request" not in e for e in bundle["entry"])
