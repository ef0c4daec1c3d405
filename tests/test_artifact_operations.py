"""Knowledge-artifact operations: $data-requirements, $package, the declared profiles, the package's
ImplementationGuide and the conditional transaction, as a FHIR client and a FHIR server would use them."""

from __future__ import annotations

import copy
import json
import tarfile
from urllib.parse import parse_qs

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.implementationguide import ImplementationGuide
from fhir.resources.R4B.library import Library

from protocol.engine.apply import Engine
from protocol.engine.bundle import artifact_bundle
from protocol.engine.content import Content, load_content
from protocol.engine.package import build_package, implementation_guide
from protocol.engine.requirements import (
    data_requirements,
    dependencies,
    module_definition,
    package_bundle,
)
from protocol.engine.validation import SHAREABLE, validate_content
from service.cds_hooks.prefetch import prefetch_templates
from tests.fhir_check import fhir_check
from tests.service_helpers import make_app, shared_engine

PATHWAY = "back-spasm-treatment-pathway"
REVIEW = "back-spasm-order-review"
LOGIC = "back-spasm-logic"


@pytest.fixture(scope="module")
def engine():
    return shared_engine()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("db")).test_client()


def _canonicals_in(value) -> set[str]:
    """Every string of a JSON value that names an artifact's url (the whole string)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_canonicals_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_canonicals_in(v) for v in value)) if value else set()
    return set()


# -- $data-requirements ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [f"PlanDefinition/{PATHWAY}", f"PlanDefinition/{REVIEW}", f"Library/{LOGIC}"])
def test_data_requirements_is_a_module_definition_library(client, engine, path):
    answer = client.get(f"/fhir/{path}/$data-requirements")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    library = answer.get_json()
    Library.model_validate(library)
    assert library["type"]["coding"][0]["code"] == "module-definition"
    assert library["status"] == "active"
    requirements = library["dataRequirement"]
    assert requirements and all(r.get("type") for r in requirements)
    assert len({json.dumps(r, sort_keys=True) for r in requirements}) == len(requirements), "each requirement once"
    assert {p["name"] for p in library["parameter"]} >= {"draftOrders", "draftOrder"}


def test_data_requirements_carry_valueset_filters_date_filters_and_dependencies(client, engine):
    library = client.get(f"/fhir/PlanDefinition/{PATHWAY}/$data-requirements").get_json()
    content = engine.content
    logic = content.get("Library", LOGIC)
    assert {r["id"] for r in library["dataRequirement"]} >= {r["id"] for r in logic["dataRequirement"]}
    for requirement in library["dataRequirement"]:
        for code_filter in requirement.get("codeFilter") or []:
            if code_filter.get("valueSet"):
                assert content.resolve(code_filter["valueSet"], "ValueSet") is not None
    pain = next(r for r in library["dataRequirement"] if r["id"] == "painObservations")
    assert pain["dateFilter"][0]["valueDuration"]["value"] == 72
    related = [a["resource"] for a in library["relatedArtifact"] if a["type"] == "depends-on"]
    assert len(related) == len(set(related)), "each dependency once"
    assert f"{logic['url']}|{logic['version']}" in related
    for requirement in library["dataRequirement"]:
        for code_filter in requirement.get("codeFilter") or []:
            vs = content.resolve(code_filter["valueSet"], "ValueSet")
            assert f"{vs['url']}|{vs['version']}" in related, "every ValueSet filtered on is a dependency"
    assert "http://snomed.info/sct" in related and "http://www.nlm.nih.gov/research/umls/rxnorm" in related
    assert not any(a.endswith(f"PlanDefinition/{PATHWAY}|1.0.0") for a in related), "not a dependency of itself"


def test_discovery_prefetch_comes_from_the_same_requirements(client, engine):
    discovery = None
    for plan_id, plan in engine.plans.items():
        library = module_definition(engine.content, plan.resource)
        assert library["dataRequirement"] == data_requirements(engine.content, plan.resource)
        templates = prefetch_templates(engine, plan, 8000)
        read_types = {r["type"] for r in library["dataRequirement"]} - {"Patient"}
        assert {t.split("?")[0] for t in templates.values() if "?" in t} == read_types, plan_id
        discovery = discovery or templates
    assert discovery


def test_a_new_data_requirement_reaches_both_answers():
    content = load_content()
    resources = copy.deepcopy(content.resources)
    logic = next(r for r in resources if r["resourceType"] == "Library")
    logic["dataRequirement"].append({"id": "procedures", "type": "Procedure",
                                     "codeFilter": [{"path": "code", "valueSet": logic["dataRequirement"][0]["codeFilter"][0]["valueSet"]}]})
    changed = Content(directory=content.directory, publication=content.publication, resources=resources)
    engine = Engine(changed)
    plan = engine.plans[PATHWAY]
    assert "procedure" in prefetch_templates(engine, plan, 8000)
    assert any(r["id"] == "procedures" for r in module_definition(changed, plan.resource)["dataRequirement"])


def test_data_requirements_pass_the_independent_checker(client, tmp_path):
    library = client.get(f"/fhir/PlanDefinition/{REVIEW}/$data-requirements").get_json()
    code, report = fhir_check(data=library, tmp_path=tmp_path)
    assert code == 0, report


def test_data_requirements_refuses_parameters_and_unknown_artifacts(client):
    assert client.get(f"/fhir/PlanDefinition/{PATHWAY}/$data-requirements?subject=Patient/1").status_code == 400
    assert client.get("/fhir/PlanDefinition/nope/$data-requirements").status_code == 404
    assert client.post(f"/fhir/Library/{LOGIC}/$data-requirements").status_code == 200


# -- $package -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("plan_id", [PATHWAY, REVIEW])
def test_package_holds_the_plan_and_every_dependency_once(client, engine, plan_id):
    answer = client.get(f"/fhir/PlanDefinition/{plan_id}/$package")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    bundle = answer.get_json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    keys = [(r["resourceType"], r["id"]) for r in resources]
    assert keys[0] == ("PlanDefinition", plan_id)
    assert len(keys) == len(set(keys)), "each artifact once"
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(keys)
    types = {r["resourceType"] for r in resources}
    assert {"Library", "ActivityDefinition", "ValueSet", "CodeSystem", "StructureDefinition"} <= types
    assert all(r.get("expansion", {}).get("contains") for r in resources if r["resourceType"] == "ValueSet")
    urls = {r["url"] for r in resources}
    content = engine.content
    for resource in resources:
        for text in _canonicals_in(resource):
            target = content.resolve(text)
            if target is not None and target["resourceType"] != "PlanDefinition":
                assert target["url"] in urls, f"{resource['id']} uses {text}, which the package lacks"
    plan = content.get("PlanDefinition", plan_id)
    for action_definition in (a.get("definitionCanonical") for a in _all_actions(plan["action"])):
        if action_definition:
            assert content.resolve(action_definition)["url"] in urls


def _all_actions(actions):
    for action in actions:
        yield action
        yield from _all_actions(action.get("action") or [])


def test_package_leaves_out_what_the_plan_does_not_use(engine):
    bundle = package_bundle(engine.content, engine.content.get("PlanDefinition", PATHWAY))
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    assert REVIEW not in ids
    assert "cyclobenzaprine-correct-order" not in ids, "only the order review changes a draft order"
    assert len(ids) < len(engine.content.resources)


def test_dependencies_follow_valuesets_named_inside_expressions(engine):
    content = engine.content
    logic = content.get("Library", LOGIC)
    named = {r["url"] for r in dependencies(content, logic)}
    in_expressions = json.dumps(logic).count("memberOf(")
    assert in_expressions and any("/ValueSet/" in url for url in named)


def test_package_resources_pass_the_independent_checker(client, tmp_path):
    bundle = client.get(f"/fhir/PlanDefinition/{REVIEW}/$package").get_json()
    code, report = fhir_check(data=bundle, tmp_path=tmp_path)
    assert code == 0, report


# -- profiles -------------------------------------------------------------------------------------------------------

def test_every_artifact_declares_its_shareable_profile_and_validates(engine):
    for resource in engine.content.resources:
        shareable = SHAREABLE.get(resource["resourceType"])
        if shareable:
            assert shareable in resource["meta"]["profile"], resource["id"]
    assert validate_content(engine.content) == []


@pytest.mark.parametrize("element", ["url", "version", "name", "experimental", "publisher", "description"])
def test_validate_names_a_missing_element_a_shareable_profile_requires(element):
    content = load_content()
    resources = copy.deepcopy(content.resources)
    plan = next(r for r in resources if r["resourceType"] == "PlanDefinition")
    del plan[element]
    problems = validate_content(Content(directory=content.directory, publication=content.publication, resources=resources))
    assert any(p.path == f"PlanDefinition.{element}" and "shareableplandefinition" in p.message for p in problems), problems


def test_validate_checks_the_computable_plan_and_activity_profiles():
    content = load_content()
    resources = copy.deepcopy(content.resources)
    plan = next(r for r in resources if r["resourceType"] == "PlanDefinition")
    plan["library"] = plan["library"] * 2
    activity = next(r for r in resources if r["resourceType"] == "ActivityDefinition"
                    and any(p.endswith("cpg-servicerequestactivity") for p in r["meta"]["profile"]))
    activity["meta"]["profile"].remove(SHAREABLE["ActivityDefinition"])
    problems = validate_content(Content(directory=content.directory, publication=content.publication, resources=resources))
    assert any(p.path == "PlanDefinition.library" and "cpg-computableplandefinition" in p.message for p in problems), problems
    assert any(p.path == "ActivityDefinition.meta.profile" and SHAREABLE["ActivityDefinition"] in p.message for p in problems), problems


def test_validate_wants_every_valueset_to_ship_its_whole_expansion():
    content = load_content()
    resources = copy.deepcopy(content.resources)
    valuesets = [r for r in resources if r["resourceType"] == "ValueSet"]
    del valuesets[0]["expansion"]
    valuesets[1]["expansion"]["contains"].pop()
    problems = validate_content(Content(directory=content.directory, publication=content.publication, resources=resources))
    found = {(p.file, p.path) for p in problems}
    assert (f"ValueSet-{valuesets[0]['id']}.json", "ValueSet.expansion") in found, problems
    assert (f"ValueSet-{valuesets[1]['id']}.json", "ValueSet.expansion.total") in found, problems


# -- the NPM package's ImplementationGuide ------------------------------------------------------------------------

def test_package_carries_an_implementation_guide(tmp_path, engine):
    path = build_package(engine.content, tmp_path, with_guide=True)
    with tarfile.open(path, "r:gz") as archive:
        files = {m.name: json.loads(archive.extractfile(m).read()) for m in archive.getmembers()}
    pub = engine.content.publication
    guide = files[f"package/ImplementationGuide-{pub['packageId']}.json"]
    index = files["package/.index.json"]
    assert {f["filename"] for f in index["files"]} == {name[len("package/"):] for name in files} - {"package.json", ".index.json"}
    assert {"filename": f"ImplementationGuide-{pub['packageId']}.json", "resourceType": "ImplementationGuide", "id": pub["packageId"],
            "url": guide["url"], "version": pub["version"]} in index["files"]
    ImplementationGuide.model_validate(guide)
    assert guide == implementation_guide(engine.content)
    assert guide["packageId"] == pub["packageId"] and guide["version"] == pub["version"]
    assert guide["fhirVersion"] == [pub["fhirVersion"]]
    listed = {g["reference"]["reference"] for g in guide["definition"]["resource"]}
    assert listed == {f"{r['resourceType']}/{r['id']}" for r in engine.content.resources}
    assert build_package(engine.content, tmp_path / "again", with_guide=True).read_bytes() == path.read_bytes(), "still reproducible"


def test_package_without_the_guide_is_the_artifacts_only(tmp_path, engine):
    with tarfile.open(build_package(engine.content, tmp_path, with_guide=False), "r:gz") as archive:
        assert not any("ImplementationGuide" in name for name in archive.getnames())


def test_implementation_guide_passes_the_independent_checker(tmp_path, engine):
    """Without the JSON Schema validator: its R4 build rejects fhirVersion 4.0.1 (a known false positive, fhir-check README)."""
    code, report = fhir_check("--validators", "medplum,bindings", data=implementation_guide(engine.content), tmp_path=tmp_path)
    assert code == 0, report


# -- conditional transaction -----------------------------------------------------------------------------------------

def test_conditional_bundle_creates_only_what_the_server_lacks(engine):
    bundle = artifact_bundle(engine.content, conditional=True)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    assert len(bundle["entry"]) == len(engine.content.resources)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        request = entry["request"]
        assert request["method"] == "POST" and request["url"] == resource["resourceType"]
        query = parse_qs(request["ifNoneExist"])
        assert query == {"url": [resource["url"]], "version": [resource["version"]]}
        assert entry["fullUrl"].startswith("urn:uuid:")
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])
    assert artifact_bundle(engine.content, conditional=True) == bundle, "the same content gives the same bundle"


def test_conditional_is_for_transactions_only(engine):
    with pytest.raises(ValueError):
        artifact_bundle(engine.content, "collection", conditional=True)
    plain = artifact_bundle(engine.content)
    assert all(e["request"]["method"] == "PUT" for e in plain["entry"])


def test_conditional_bundle_imports_in_the_independent_checker(engine, tmp_path):
    bundle = artifact_bundle(engine.content, conditional=True)
    code, report = fhir_check(data=bundle, tmp_path=tmp_path)
    assert code == 0, report
    code, report = fhir_check("--import", data=bundle, tmp_path=tmp_path)
    assert code == 0 and report["accepted"] and report["errors"] == [], report
