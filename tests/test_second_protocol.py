"""A second protocol served beside the back muscle spasm protocol, with no code of its own.

``tests/data/second-protocol/`` is a small test protocol (its own canonical base, version and publisher, a Library
of two FHIRPath findings, a PlanDefinition triggered on patient-view with one action, a ValueSet): a reminder to ask
how the patient is doing after a recent physical therapy session. Loaded with the back-spasm folder, discovery lists
the services of both, each protocol's service gives its own cards (the back-spasm ones exactly as when served
alone), /fhir and the pages serve both, the package and bundle of each carry its own publication facts, and two
protocols that define the same artifact are refused at load, naming both files.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import uuid
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from protocol.engine.bundle import artifact_bundle
from protocol.engine.content import CONTENT_DIR, ContentError, load_content, load_contents, protocol_folders
from protocol.engine.package import build_package
from protocol.engine.validation import validate_content
from service import create_app, state_of
from service.cli import main
from service.config import Settings
from tests import service_helpers as helpers
from tests.patients import CLOCK, CYCLOBENZAPRINE_5, PHENELZINE, PT_PROCEDURE, Patient, concept, when

SECOND = Path(__file__).resolve().parent / "data" / "second-protocol"
SECOND_SERVICE = "physical-therapy-follow-up-patient-view"
ACTION = "ask-after-physical-therapy"
PUBLICATION = json.loads((SECOND / "publication.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("second-protocol")
    settings = Settings.load(environ={}, overrides={"database": str(folder / "cds.sqlite"),
                                                    "content_dirs": [str(CONTENT_DIR), str(SECOND)]})
    return create_app(settings, clock=lambda: CLOCK)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The back-spasm protocol served alone, to compare with."""
    return helpers.make_app(tmp_path_factory.mktemp("alone")).test_client()


def after_therapy(days_ago: float) -> Patient:
    """A 50-year-old whose latest completed physical therapy session was that many days ago."""
    patient = Patient(50)
    patient.add({"resourceType": "Procedure", "status": "completed", "subject": patient.ref, "code": concept(PT_PROCEDURE),
                 "performedDateTime": when(days_ago=days_ago)})
    return patient


def second_call(app, client, patient: Patient):
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": helpers.USER, "patientId": patient.id},
            "prefetch": helpers.prefetch_for(app, SECOND_SERVICE, patient.resources)}
    return client.post(f"/cds-services/{SECOND_SERVICE}", json=body)


# -- the service ------------------------------------------------------------------------------------------------------


def test_discovery_lists_the_services_of_both_protocols(client):
    services = client.get("/cds-services").get_json()["services"]
    ids = [s["id"] for s in services]
    assert sorted(ids) == sorted([*helpers.SERVICES.values(), SECOND_SERVICE])
    assert len(ids) == len(set(ids))
    second = next(s for s in services if s["id"] == SECOND_SERVICE)
    assert second["hook"] == "patient-view" and second["title"] == "Physical therapy follow-up reminder"
    assert "procedure" in second["prefetch"] and "91251008" in second["prefetch"]["procedure"], "its own data requirement"


def test_the_second_protocol_gives_its_card_and_links_to_its_own_page(app, client):
    answer = second_call(app, client, after_therapy(3))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    cards = answer.get_json()["cards"]
    assert len(cards) == 1
    card = cards[0]
    assert card["summary"] == "Ask how the patient is doing after physical therapy" and card["indicator"] == "info"
    assert when(days_ago=3)[:10] in card["detail"], "the date of the session, from the Library's finding"
    url = urlsplit(card["source"]["url"])
    assert (url.path, url.fragment) == ("/protocol/second-protocol", ACTION)
    assert ACTION in client.get(url.path).get_data(as_text=True)


def test_the_second_protocol_is_silent_without_a_recent_session(app, client):
    for patient in (after_therapy(30), Patient(50)):
        answer = second_call(app, client, patient)
        assert answer.status_code == 200 and answer.get_json()["cards"] == []


def test_the_first_protocol_answers_as_when_it_is_served_alone(app, client, alone):
    patient = Patient(52)
    patient.spasm(20)
    patient.medication(PHENELZINE)
    draft = patient.draft_medication(CYCLOBENZAPRINE_5)
    for hook, drafts in (("patient-view", []), ("order-sign", [draft]), ("order-select", [draft])):
        body = helpers.hook_body(app, hook, patient, drafts)
        together = helpers.cards_of(client, hook, body)
        served_alone = helpers.cards_of(alone, hook, body)
        assert together, hook
        assert helpers.without_uuids(together) == helpers.without_uuids(served_alone), hook
        assert all(urlsplit(c["source"]["url"]).path == "/protocol" for c in together)


def test_the_fhir_api_serves_the_artifacts_of_both_protocols(client):
    for path in ("PlanDefinition/physical-therapy-follow-up", "Library/physical-therapy-follow-up-logic",
                 "ValueSet/physical-therapy-sessions", "PlanDefinition/back-spasm-treatment-pathway"):
        answer = client.get(f"/fhir/{path}")
        assert answer.status_code == 200, path
        assert answer.get_json()["id"] == path.split("/")[1]
    found = client.get(f"/fhir/ValueSet?url={PUBLICATION['canonical']}/ValueSet/physical-therapy-sessions").get_json()
    assert [e["resource"]["version"] for e in found["entry"]] == [PUBLICATION["version"]]
    package = client.get("/fhir/PlanDefinition/physical-therapy-follow-up/$package").get_json()
    assert sorted(e["resource"]["id"] for e in package["entry"]) == ["physical-therapy-follow-up", "physical-therapy-follow-up-logic",
                                                                     "physical-therapy-sessions"], "only its own artifacts"


def test_data_requirements_and_readiness_speak_of_each_protocol_as_published(client):
    """The second protocol's $data-requirements carries its own status, and /readyz names the version of each."""
    first = json.loads((CONTENT_DIR / "publication.json").read_text(encoding="utf-8"))
    assert first["status"] != PUBLICATION["status"], "the two fixtures must differ for this test to tell them apart"
    answer = client.get("/fhir/PlanDefinition/physical-therapy-follow-up/$data-requirements").get_json()
    assert answer["resourceType"] == "Library" and answer["status"] == PUBLICATION["status"]
    ready = client.get("/readyz").get_json()
    assert ready["protocols"] == {CONTENT_DIR.name: first["version"], SECOND.name: PUBLICATION["version"]}


# -- the pages --------------------------------------------------------------------------------------------------------


def test_each_protocol_has_its_page_and_the_default_stays_at_protocol(client):
    second = client.get("/protocol/second-protocol")
    assert second.status_code == 200 and second.mimetype == "text/html"
    page = second.get_data(as_text=True)
    assert PUBLICATION["title"] in page and PUBLICATION["version"] in page and f'id="{ACTION}"' in page
    for absent in ('id="safety-rules"', 'id="phases"', 'id="checked-first"'):
        assert absent not in page, f"no phases, rules or suspension in this protocol: {absent}"
    assert "Cards when the chart is opened" in page and "Other cards" not in page, "its card stands alone"
    first = client.get("/protocol").get_data(as_text=True)
    assert client.get("/").get_data(as_text=True) == first
    assert 'id="phases"' in first and 'id="safety-rules"' in first
    assert client.get("/protocol/back-spasm").status_code == 200
    assert 'href="protocol/second-protocol"' in first and 'href="../protocol/back-spasm"' in page, "each page lists the others"


def test_the_links_of_a_protocol_page_resolve_from_where_it_is_served(client):
    page = client.get("/protocol/second-protocol").get_data(as_text=True)
    base = "http://localhost/protocol/second-protocol"
    hrefs = [h for h in re.findall(r'href="([^"#][^"]*)"', page) if not h.startswith("http")]
    assert hrefs
    for href in hrefs:
        path = urlsplit(urljoin(base, href.replace("&amp;", "&"))).path
        if path.startswith("/fhir/"):
            continue  # the FHIR API, checked above
        answer = client.get(path)
        assert answer.status_code == 200, (href, path)
        answer.close()


def test_an_unknown_protocol_page_is_a_json_404(client):
    answer = client.get("/protocol/no-such-protocol")
    assert answer.status_code == 404
    assert "no-such-protocol" in json.dumps(answer.get_json())


# -- package, bundle, validation, collisions --------------------------------------------------------------------------


def test_the_package_and_bundle_of_each_protocol_carry_its_own_publication(tmp_path):
    for folder, jurisdiction in ((SECOND, "urn:iso:std:iso:3166#AU"), (CONTENT_DIR, "urn:iso:std:iso:3166#US")):
        content = load_content(folder)
        pub = content.publication
        path = build_package(content, tmp_path / folder.name)
        assert path.name == f"{pub['packageId']}-{pub['version']}.tgz"
        with tarfile.open(path) as archive:
            manifest = json.load(io.TextIOWrapper(archive.extractfile("package/package.json"), encoding="utf-8"))
            guide = json.load(io.TextIOWrapper(archive.extractfile(f"package/ImplementationGuide-{pub['packageId']}.json"), encoding="utf-8"))
        assert (manifest["name"], manifest["version"], manifest["canonical"], manifest["author"], manifest["license"]) == \
            (pub["packageId"], pub["version"], pub["canonical"], pub["publisher"], pub["license"])
        assert manifest["description"] == pub["description"] and manifest["jurisdiction"] == jurisdiction
        assert guide["description"] == pub["description"] and guide["jurisdiction"] == pub["jurisdiction"]
        bundle = artifact_bundle(content)
        assert bundle["id"] == f"{pub['name']}-{pub['version']}".replace(".", "-")
        assert all(e["fullUrl"].startswith(pub["canonical"] + "/") for e in bundle["entry"])
        assert len(bundle["entry"]) == len(content.resources)


def test_a_merged_content_keeps_each_resources_publication():
    content = load_contents([CONTENT_DIR, SECOND])
    assert [p.name for p in content.protocols] == ["back-spasm", "second-protocol"]
    plan = content.get("PlanDefinition", "physical-therapy-follow-up")
    assert content.protocol_of(plan).directory == SECOND and content.publication_of(plan)["version"] == "0.3.0"
    assert content.canonical("Library", "physical-therapy-follow-up-logic").startswith(PUBLICATION["canonical"])
    assert content.publication is content.protocols[0].publication, "the first protocol is the default"
    assert validate_content(content) == [], "each artifact is checked against its own protocol's publication.json"


def test_validate_passes_on_both_protocols(capsys):
    assert main(["validate", "--content", str(SECOND)]) == 0
    assert f"OK: 3 artifacts in {SECOND} (version 0.3.0" in capsys.readouterr().out
    assert validate_content(load_content(CONTENT_DIR)) == []


def test_validate_without_content_checks_every_protocol_folder(tmp_path, capsys, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "protocol" / "content").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parent.parent / "pyproject.toml", checkout / "pyproject.toml")
    shutil.copytree(CONTENT_DIR, checkout / "protocol" / "content" / "back-spasm")
    shutil.copytree(SECOND, checkout / "protocol" / "content" / "second-protocol")
    monkeypatch.chdir(checkout)
    assert protocol_folders(checkout / "protocol" / "content") == [checkout / "protocol" / "content" / n for n in ("back-spasm", "second-protocol")]
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 artifacts in" in out and "second-protocol" in out and "back-spasm" in out
    edit(checkout / "protocol" / "content" / "second-protocol" / "Library-physical-therapy-follow-up-logic.json",
         lambda library: library.update(version="9.9.9"))
    assert main(["validate"]) == 1, "a problem in any protocol fails the whole check"
    assert "expected 0.3.0 (from publication.json)" in capsys.readouterr().err


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


@pytest.mark.parametrize("clash", ["same-url", "same-id"])
def test_two_protocols_defining_the_same_artifact_are_refused_naming_both_files(tmp_path, clash):
    folder = tmp_path / "second-protocol"
    shutil.copytree(SECOND, folder)
    first = load_content(CONTENT_DIR).get("ValueSet", "physical-therapy")
    valueset = folder / "ValueSet-physical-therapy-sessions.json"
    if clash == "same-url":
        edit(valueset, lambda vs: vs.update(url=first["url"], version=first["version"]))
        message = f"two protocols define {first['url']}|{first['version']}"
    else:
        edit(valueset, lambda vs: vs.update(id="physical-therapy"))
        valueset = valueset.rename(folder / "ValueSet-physical-therapy.json")
        message = "two protocols define ValueSet/physical-therapy"
    with pytest.raises(ContentError) as caught:
        load_contents([CONTENT_DIR, folder])
    text = str(caught.value)
    assert message in text and str(valueset) in text and str(CONTENT_DIR / "ValueSet-physical-therapy.json") in text
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "cds.sqlite"), "content_dirs": [str(CONTENT_DIR), str(folder)]})
    with pytest.raises(ContentError):
        create_app(settings)


def test_content_dirs_from_the_environment_and_which_setting_wins(tmp_path):
    settings = Settings.load(environ={"BACK_SPASM_CDS_CONTENT_DIRS": f"{CONTENT_DIR}{os.pathsep}{SECOND}"})
    assert settings.content_folders() == [str(CONTENT_DIR), str(SECOND)]
    settings = Settings.load(environ={"BACK_SPASM_CDS_CONTENT_DIRS": f"{CONTENT_DIR},{SECOND}"}, overrides={"content_dir": str(SECOND)})
    assert settings.content_folders() == [str(SECOND)], "the command line's --content wins over the environment"
    assert Settings.load(environ={}).content_folders() is None, "default: every protocol folder shipped"
    assert state_of(create_app(Settings.load(environ={}, overrides={"database": str(tmp_path / "cds.sqlite")}))).engine.content.name == "back-spasm"
