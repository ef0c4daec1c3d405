"""The protocol content: it validates, and each kind of broken artifact is reported with its file and path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from protocol.engine.content import CONTENT_DIR, PUBLICATION_FILE, PUBLICATION_NAME, ContentError, load_content
from protocol.engine.validation import validate_content

PATHWAY = "PlanDefinition-back-spasm-treatment-pathway.json"
REVIEW = "PlanDefinition-back-spasm-order-review.json"
LIBRARY = "Library-back-spasm-logic.json"
HEAT = "ActivityDefinition-heat-therapy-immediate.json"


@pytest.fixture(scope="module")
def content():
    return load_content()


@pytest.fixture
def broken(tmp_path):
    """A writable copy of the content folder (with publication.json beside it) and a function to edit one file."""
    target = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, target, ignore=shutil.ignore_patterns(PUBLICATION_NAME))
    shutil.copy(PUBLICATION_FILE, tmp_path / "publication.json")

    def edit(name, change):
        path = target / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        return target

    return edit


def problems_of(folder):
    return [str(p) for p in validate_content(load_content(folder))]


def one_problem(folder, file, path, message):
    problems = problems_of(folder)
    matching = [p for p in problems if p.startswith(f"{file}: {path}: ") and message in p]
    assert matching, f"expected a problem at {file}: {path} mentioning {message!r}; got {problems}"
    return problems


def test_shipped_content_is_valid(content):
    assert validate_content(content) == []


def test_every_resource_is_one_file_named_type_id(content):
    for resource in content.resources:
        assert content.file_of(resource).name == f"{resource['resourceType']}-{resource['id']}.json"


def test_a_clinical_code_that_no_valueset_holds_is_reported(broken):
    def change(ad):
        ad["code"]["coding"][0]["code"] = "999999999"
    folder = broken(HEAT, change)
    one_problem(folder, HEAT, "ActivityDefinition.code.coding[0]", "http://snomed.info/sct|999999999 is in no ValueSet")


def test_a_code_outside_a_required_binding_is_reported(broken):
    def change(pd):
        pd["action"][0]["selectionBehavior"] = "exactly-two"
        pd["status"] = "activ"
    folder = broken(PATHWAY, change)
    one_problem(folder, PATHWAY, "PlanDefinition.action[0].selectionBehavior", "'exactly-two' is not a valid code")
    one_problem(folder, PATHWAY, "PlanDefinition.status", "not a publication status")


def test_a_dangling_definition_canonical_is_reported(broken):
    def change(pd):
        pd["action"][0]["action"][0]["action"][0]["definitionCanonical"] += "-missing"
    folder = broken(PATHWAY, change)
    one_problem(folder, PATHWAY, "PlanDefinition.action[0].action[0].action[0].definitionCanonical", "does not resolve")


def test_dangling_library_and_valueset_canonicals_are_reported(broken):
    broken(REVIEW, lambda pd: pd.update(library=[pd["library"][0] + "|9.9.9"]))
    folder = broken(LIBRARY, lambda lib: lib["dataRequirement"][0]["codeFilter"][0].update(valueSet="http://example.org/ValueSet/nope"))
    one_problem(folder, REVIEW, "PlanDefinition.library[0]", "does not resolve")
    one_problem(folder, LIBRARY, "Library.dataRequirement[0].codeFilter[0].valueSet", "does not resolve")


def test_a_memberof_valueset_that_is_not_shipped_is_reported(broken):
    def change(lib):
        for ext in lib["extension"]:
            expr = ext.get("valueExpression", {})
            if expr.get("name") == "activeSpasm":
                expr["expression"] = expr["expression"].replace("/back-muscle-spasm", "/back-muscle-spasms")
    folder = broken(LIBRARY, change)
    problems = problems_of(folder)
    assert any(p.startswith(f"{LIBRARY}: Library.extension[") and "memberOf" in p and "back-muscle-spasms" in p for p in problems), problems


def test_a_fhirpath_syntax_error_is_reported(broken):
    def change(pd):
        pd["action"][0]["condition"][1]["expression"]["expression"] = "%phase >"
    folder = broken(PATHWAY, change)
    one_problem(folder, PATHWAY, "PlanDefinition.action[0].condition[1].expression.expression", "FHIRPath does not compile")


def test_an_undefined_variable_is_reported(broken):
    def change(pd):
        pd["action"][1]["condition"][1]["expression"]["expression"] = "%onset.empty() and %onsett.exists()"
    folder = broken(PATHWAY, change)
    one_problem(folder, PATHWAY, "PlanDefinition.action[1].condition[1].expression.expression", "undefined variable %onsett")


def test_a_library_variable_may_only_use_earlier_names(broken):
    def change(lib):
        first = next(e for e in lib["extension"] if e.get("valueExpression", {}).get("name") == "isAdult")
        first["valueExpression"]["expression"] = "%inScope"
    folder = broken(LIBRARY, change)
    problems = problems_of(folder)
    assert any(p.startswith(f"{LIBRARY}: Library.extension[") and "undefined variable %inScope" in p for p in problems), problems


def test_a_structural_error_is_reported_with_its_path(broken):
    folder = broken(PATHWAY, lambda pd: pd["action"][3].update(title={"text": "not a string"}))
    one_problem(folder, PATHWAY, "PlanDefinition.action[3].title", "valid string")


def test_a_plan_narrative_that_misses_an_action_is_reported(broken):
    folder = broken(PATHWAY, lambda pd: pd["action"][2].update(title="A new card nobody described"))
    one_problem(folder, PATHWAY, "PlanDefinition.action[2].title", "narrative (text.div) does not mention this action")


def test_url_and_version_must_follow_publication_json(broken):
    folder = broken(HEAT, lambda ad: ad.update(version="0.9.0", url=ad["url"].replace("back-spasm-cds", "other")))
    one_problem(folder, HEAT, "ActivityDefinition.version", "expected 1.0.0")
    one_problem(folder, HEAT, "ActivityDefinition.url", "expected http://example.org/fhir/back-spasm-cds/ActivityDefinition/heat-therapy-immediate")


def test_a_dynamic_value_path_must_name_an_element_of_the_generated_resource(broken):
    folder = broken(HEAT, lambda ad: ad["dynamicValue"][0].update(path="patientInstructions"))
    one_problem(folder, HEAT, "ActivityDefinition.dynamicValue[0].path", "'patientInstructions' is not an element of ServiceRequest")


def test_unreadable_json_names_the_file_and_position(broken, tmp_path):
    folder = broken(HEAT, lambda ad: None)
    (folder / HEAT).write_text('{"resourceType": "ActivityDefinition",,}')
    with pytest.raises(ContentError, match=re.escape(HEAT) + r".*line 1, column"):
        load_content(folder)


# -- every rule of PROTOCOL.md is data ---------------------------------------------------------------

def _actions(actions):
    for action in actions:
        yield action
        yield from _actions(action.get("action", []))


def _codes_of_actions(content, pd_id):
    pd = content.get("PlanDefinition", pd_id)
    return {c["code"] for a in _actions(pd["action"]) for c in a.get("code", [{}])[0].get("coding", [])}


def _variable(content, name):
    lib = content.get("Library", "back-spasm-logic")
    return next(e["valueExpression"]["expression"] for e in lib["extension"] if e.get("valueExpression", {}).get("name") == name)


def test_every_safety_rule_has_an_action_for_proposals_and_for_draft_orders(content):
    pathway = _codes_of_actions(content, "back-spasm-treatment-pathway")
    review = _codes_of_actions(content, "back-spasm-order-review")
    for rule in ("S1", "S2", "S3", "S4", "S6", "S7", "S10", "S12"):
        assert rule in pathway, f"{rule} missing from the treatment pathway"
    assert "S5" in pathway and "S11" in pathway
    for rule in ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S12"):
        assert rule in review, f"{rule} missing from the order review"
    for order in ("lumbar-support", "tens", "traction"):
        assert order in review


def test_phase_boundaries_are_in_the_phase_variable_and_agree_with_the_phase_timing(content):
    phase = _variable(content, "phase")
    assert "now() - 48 hours" in phase and "now() - 7 days" in phase and "now() - 28 days" in phase
    pd = content.get("PlanDefinition", "back-spasm-treatment-pathway")
    timing = {a["id"]: a["timingRange"] for a in _actions(pd["action"]) if a["id"].startswith("phase-") and "timingRange" in a}
    assert timing["phase-1"]["high"]["value"] == timing["phase-2"]["low"]["value"] == 48
    assert timing["phase-2"]["high"]["value"] == timing["phase-3"]["low"]["value"] == 7 * 24
    assert timing["phase-3"]["high"]["value"] == timing["phase-4"]["low"]["value"] == 28 * 24


def test_thresholds_of_the_safety_rules_are_in_the_logic(content):
    assert "today() - 65 years" in _variable(content, "isOlderAdult")
    assert "today() - 18 years" in _variable(content, "isAdult")
    assert "14 days" in _variable(content, "maoiFinding")
    assert "90 days" in _variable(content, "cardiacFinding")
    assert "21 days" in _variable(content, "longCyclobenzaprineOrders")
    assert "> 21" in _variable(content, "draftCourseTooLong")
    assert "> 10" in _variable(content, "draftDoseTooHigh") and "> 30" in _variable(content, "draftDoseTooHigh")
    assert ">= 7" in _variable(content, "severePain")
    pain = next(dr for dr in content.get("Library", "back-spasm-logic")["dataRequirement"] if dr["id"] == "painObservations")
    assert pain["dateFilter"] == [{"path": "effective", "valueDuration": {"value": 72, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}}]


def test_codes_written_inside_expressions_come_from_the_terminology(content):
    known = content.terminology.all_codes()
    systems = {"http://snomed.info/sct", "http://loinc.org", "http://www.nlm.nih.gov/research/umls/rxnorm"}
    pattern = re.compile(r"system = '([^']+)' and code = '([^']+)'")
    for resource in content.resources:
        for system, code in pattern.findall(json.dumps(resource)):
            if system in systems:
                assert (system, code) in known, f"{resource['id']}: {system}|{code}"


def test_no_clinical_code_is_written_in_python():
    known = load_content().terminology.all_codes()
    codes = {code for system, code in known if len(code) >= 4 and any(ch.isdigit() for ch in code)}
    root = Path(__file__).resolve().parent.parent
    for folder in ("protocol", "service"):
        for path in (root / folder).rglob("*.py"):
            literals = set(re.findall(r"""['"]([A-Z]?[0-9][0-9A-Z.\-]{3,})['"]""", path.read_text()))
            assert not literals & codes, f"{path}: clinical codes {sorted(literals & codes)} belong in protocol content"


def test_the_default_content_is_every_protocol_folder_with_a_publication(tmp_path):
    from protocol.engine.content import CONTENT_ROOT, load_contents, protocol_folders

    folders = protocol_folders()
    assert CONTENT_DIR in folders and all((f / PUBLICATION_NAME).is_file() and f.parent == CONTENT_ROOT for f in folders)
    merged = load_contents()
    assert [p.directory for p in merged.protocols] == folders
    assert merged.get("PlanDefinition", "back-spasm-treatment-pathway") is not None
    (tmp_path / "no-publication").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / PUBLICATION_NAME).write_text("{}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / PUBLICATION_NAME).write_text("{}")
    assert protocol_folders(tmp_path) == [tmp_path / "a", tmp_path / "b"], "by name; a folder without publication.json is none"


def test_generator_sources_beside_the_artifacts_are_not_read_as_resources(tmp_path):
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder)
    assert (folder / "valuesets.source.json").is_file()
    (folder / "other.source.json").write_text("[1, 2, 3]")
    content = load_content(folder)
    assert len(content.resources) == len(load_content(CONTENT_DIR).resources)
    (folder / "stray.json").write_text("[1, 2, 3]")
    with pytest.raises(ContentError, match="stray.json: not a FHIR resource"):
        load_content(folder)
