"""FHIR REST as a FHIR client uses it: operations by GET, ValueSet/$expand by canonical URL, paging with _count and
next links, _summary, string, token and URI search with their modifiers, and a 400 naming every bad parameter.

Each test calls the service the way a generic FHIR client would (the URL it builds, the links it follows) and checks
the answer against the R4 search and operations rules, and against the artifacts themselves.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from tests.service_helpers import make_app, shared_engine

PATHWAY = "back-spasm-treatment-pathway"
FHIR_JSON = "application/fhir+json"
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
#: The R4 summary elements of the knowledge and terminology resources served here, beside id and meta.
SUMMARY = {"url", "identifier", "version", "name", "title", "status", "experimental", "date", "publisher", "contact", "description",
           "useContext", "jurisdiction", "type", "effectivePeriod", "immutable", "kind", "code", "doNotPerform", "content", "caseSensitive",
           "count", "abstract", "baseDefinition", "context", "derivation", "fhirVersion", "implicitRules"}
#: Never summary elements: the narrative and the substance of each artifact.
NOT_SUMMARY = {"text", "compose", "expansion", "action", "dynamicValue", "dataRequirement", "parameter", "concept", "differential",
               "extension", "library", "purpose", "copyright"}


@pytest.fixture(scope="module")
def content():
    return shared_engine().content


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("rest")).test_client()


def get(client, url: str, status: int = 200, **kwargs):
    """GET a URL (a path, or a link the server sent) and check the status and the FHIR media type."""
    parts = urlsplit(url)
    answer = client.get(parts.path + (f"?{parts.query}" if parts.query else ""), **kwargs)
    assert answer.status_code == status, (url, answer.status_code, answer.get_data(as_text=True)[:600])
    assert answer.mimetype == FHIR_JSON
    return answer.json


def ids(bundle) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def link(bundle, relation: str) -> str | None:
    return next((k["url"] for k in bundle["link"] if k["relation"] == relation), None)


def diagnostics(outcome) -> str:
    assert outcome["resourceType"] == "OperationOutcome"
    return " | ".join(i.get("diagnostics", "") for i in outcome["issue"])


def without_ids(value):
    """A resource with its generated ids blanked (two $apply calls differ only there)."""
    text = json.dumps(value)
    for generated in set(_generated(value)):
        text = text.replace(generated, "<id>")
    return json.loads(text)


def _generated(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("id", "fullUrl") and isinstance(value, str) and len(value) == 36:
                yield value
            yield from _generated(value)
    elif isinstance(node, list):
        for value in node:
            yield from _generated(value)


# -- operations by GET ------------------------------------------------------------------------------------------

def test_apply_by_get_is_apply_by_post_without_data(client):
    """Only primitive parameters: a GET carries them in the URL and applies the plan to an empty record."""
    by_get = get(client, f"/fhir/PlanDefinition/{PATHWAY}/$apply?subject=Patient/123&encounter=Encounter/9")
    body = {"resourceType": "Parameters", "parameter": [{"name": "subject", "valueString": "Patient/123"},
                                                        {"name": "encounter", "valueString": "Encounter/9"}]}
    by_post = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json=body)
    assert by_get["resourceType"] == "CarePlan" and by_get["subject"] == {"reference": "Patient/123"}
    assert without_ids(by_get) == without_ids(by_post.json)


def test_every_apply_answers_a_get(client, content):
    url = content.get("PlanDefinition", PATHWAY)["url"]
    assert get(client, f"/fhir/PlanDefinition/$apply?url={url}&version=1.0.0&subject=Patient/1")["resourceType"] == "CarePlan"
    r5 = get(client, f"/fhir/PlanDefinition/{PATHWAY}/$r5.apply?subject=Patient/1")
    assert r5["parameter"][0]["resource"]["entry"][0]["resource"]["resourceType"] == "RequestOrchestration"
    assert get(client, f"/fhir/PlanDefinition/$r5.apply?url={url}&subject=Patient/1")["resourceType"] == "Parameters"
    request = get(client, "/fhir/ActivityDefinition/heat-therapy-immediate/$apply?subject=Patient/1")
    assert request["subject"] == {"reference": "Patient/1"}


@pytest.mark.parametrize("query, named", [
    ("subject=Patient/1&data=x", "parameter data of $apply is a resource"),
    ("subject=Patient/1&parameters=x", "parameter parameters of $apply is a resource"),
    ("subject=Patient/1&patient=Patient/1", "unsupported parameter(s) of $apply: patient"),
    ("subject=Patient/1&url=http://example.org/x", "unsupported parameter(s) of $apply: url"),
    ("subject=Patient/1&subject=Patient/2", "parameter subject is given more than once"),
    ("encounter=Encounter/1", "subject is required"),
])
def test_a_get_apply_with_a_parameter_it_cannot_take_is_400_naming_it(client, query, named):
    assert named in diagnostics(get(client, f"/fhir/PlanDefinition/{PATHWAY}/$apply?{query}", 400))


def test_a_posted_apply_names_a_parameter_it_does_not_take_and_accepts_the_context_ones(client):
    subject = {"name": "subject", "valueString": "Patient/1"}
    unknown = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [
        subject, {"name": "dataEndpoint", "resource": {"resourceType": "Endpoint"}}]})
    assert unknown.status_code == 400 and "dataEndpoint" in diagnostics(unknown.json)
    context = client.post(f"/fhir/PlanDefinition/{PATHWAY}/$apply", json={"resourceType": "Parameters", "parameter": [
        subject, {"name": "userType", "valueCodeableConcept": {"text": "clinician"}}, {"name": "useServerData", "valueBoolean": False}]})
    assert context.status_code == 200 and context.json["resourceType"] == "CarePlan"


# -- ValueSet/$expand by canonical URL ----------------------------------------------------------------------------

def test_expand_by_canonical_url_is_expand_by_id(client, content):
    maoi = content.get("ValueSet", "maoi")
    by_id = get(client, "/fhir/ValueSet/maoi/$expand?count=3&offset=1")
    for query in (f"url={maoi['url']}", f"url={maoi['url']}|{maoi['version']}", f"url={maoi['url']}&valueSetVersion={maoi['version']}"):
        assert get(client, f"/fhir/ValueSet/$expand?{query}&count=3&offset=1") == by_id, query
    posted = client.post("/fhir/ValueSet/$expand", json={"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": maoi["url"]}, {"name": "count", "valueInteger": 3}, {"name": "offset", "valueInteger": 1}]})
    assert posted.status_code == 200 and posted.json == by_id
    assert by_id["expansion"]["total"] == maoi["expansion"]["total"] and by_id["expansion"]["contains"] == maoi["expansion"]["contains"][1:4]


@pytest.mark.parametrize("query, status, named", [
    ("", 400, "parameter url is required"),
    ("url=http://example.org/fhir/back-spasm-cds/ValueSet/nope", 404, "no ValueSet http://example.org/fhir/back-spasm-cds/ValueSet/nope"),
    ("url=http://example.org/fhir/back-spasm-cds/ValueSet/maoi&valueSetVersion=9.9.9", 404, "ValueSet/maoi|9.9.9"),
    ("url=http://example.org/fhir/back-spasm-cds/ValueSet/maoi|1.0.0&valueSetVersion=1.0.0", 400, "parameter valueSetVersion"),
    ("url=http://example.org/fhir/back-spasm-cds/ValueSet/maoi&count=x", 400, "parameter count must be a non-negative integer"),
    ("url=http://example.org/fhir/back-spasm-cds/ValueSet/maoi&activeOnly=true", 400, "unsupported parameter(s) of $expand: activeOnly"),
    ("url=http://example.org/fhir/back-spasm-cds/PlanDefinition/back-spasm-treatment-pathway", 404, "no ValueSet"),
])
def test_expand_by_url_names_what_is_wrong(client, query, status, named):
    assert named in diagnostics(get(client, f"/fhir/ValueSet/$expand?{query}", status))


def test_expand_of_a_valueset_by_id_takes_no_url_and_a_posted_valueset_is_not_expanded(client):
    assert "unsupported parameter(s) of $expand: url" in diagnostics(get(client, "/fhir/ValueSet/maoi/$expand?url=x", 400))
    posted = client.post("/fhir/ValueSet/$expand", json={"resourceType": "Parameters", "parameter": [
        {"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "active"}}]})
    assert posted.status_code == 400 and "valueSet" in diagnostics(posted.json)


# -- paging with _count -------------------------------------------------------------------------------------------

def test_a_client_following_next_links_gets_every_match_once(client, content):
    every = [r["id"] for r in content.of_type("ValueSet")]
    seen, pages, url = [], 0, "/fhir/ValueSet?status=active&_count=7"
    while url:
        page = get(client, url)
        Bundle.model_validate(page)
        assert page["total"] == len(every) and len(ids(page)) <= 7
        assert link(page, "first").endswith("/fhir/ValueSet?status=active&_count=7")
        assert urlsplit(link(page, "self")).query == urlsplit(url).query
        seen += ids(page)
        pages += 1
        url = link(page, "next")
    assert seen == every and pages == -(-len(every) // 7)
    last = get(client, link(get(client, "/fhir/ValueSet?status=active&_count=7"), "last"))
    assert ids(last) == every[(len(every) - 1) // 7 * 7:] and link(last, "next") is None
    back = get(client, link(last, "previous"))
    assert ids(back) == every[(len(every) - 1) // 7 * 7 - 7:(len(every) - 1) // 7 * 7]


def test_count_zero_and_summary_count_give_the_total_only(client, content):
    for query in ("_count=0", "_summary=count", "name=cyclo&_summary=count"):
        bundle = get(client, f"/fhir/ValueSet?{query}")
        assert "entry" not in bundle and link(bundle, "next") is None, query
    assert get(client, "/fhir/ValueSet?_count=0")["total"] == len(content.of_type("ValueSet"))
    assert get(client, "/fhir/ValueSet?name=cyclo&_summary=count")["total"] == len(
        [r for r in content.of_type("ValueSet") if r["name"].lower().startswith("cyclo")])


def test_an_offset_past_the_end_is_an_empty_page(client, content):
    bundle = get(client, "/fhir/PlanDefinition?_count=5&_offset=50")
    assert bundle["total"] == 2 and "entry" not in bundle and link(bundle, "next") is None


# -- _summary ------------------------------------------------------------------------------------------------------

def _tagged(resource) -> bool:
    return any((t.get("system"), t.get("code")) == SUBSETTED for t in resource.get("meta", {}).get("tag", []))


def test_summary_true_sends_the_summary_elements_of_every_artifact(client, content):
    for rtype in ("PlanDefinition", "ActivityDefinition", "Library", "ValueSet", "CodeSystem", "StructureDefinition"):
        for entry in get(client, f"/fhir/{rtype}?_summary=true")["entry"]:
            summary = entry["resource"]
            whole = content.get(rtype, summary["id"])
            assert set(summary) - {"resourceType", "id", "meta"} <= SUMMARY, set(summary) - SUMMARY
            assert not set(summary) & NOT_SUMMARY
            for element in ("url", "version", "name", "title", "status", "date", "publisher"):
                assert summary.get(element) == whole.get(element), (rtype, element)
            assert _tagged(summary)
            get_fhir_model_class(rtype).model_validate(summary)


def test_summary_of_a_read(client, content):
    whole = content.get("PlanDefinition", PATHWAY)
    summary = get(client, f"/fhir/PlanDefinition/{PATHWAY}?_summary=true")
    assert summary["url"] == whole["url"] and summary["description"] == whole["description"] and "action" not in summary
    text = get(client, f"/fhir/PlanDefinition/{PATHWAY}?_summary=text")
    assert set(text) == {"resourceType", "id", "meta", "text", "status"} and text["text"] == whole["text"] and _tagged(text)
    data = get(client, f"/fhir/PlanDefinition/{PATHWAY}?_summary=data")
    assert "text" not in data and data["action"] == whole["action"] and _tagged(data)
    assert get(client, f"/fhir/PlanDefinition/{PATHWAY}?_summary=false") == whole
    assert get(client, f"/fhir/PlanDefinition/{PATHWAY}") == whole, "the served artifact itself is never cut"
    assert not _tagged(whole)


@pytest.mark.parametrize("url, named", [
    (f"/fhir/PlanDefinition/{PATHWAY}?_summary=count", "_summary=count"),
    (f"/fhir/PlanDefinition/{PATHWAY}?_summary=yes", "_summary must be one of true, text, data, count, false"),
    (f"/fhir/PlanDefinition/{PATHWAY}?_elements=id", "unsupported parameter(s) of read: _elements"),
    ("/fhir/PlanDefinition?_summary=TRUE", "_summary must be one of"),
    ("/fhir/PlanDefinition?_summary=true&_summary=false", "_summary is given more than once"),
])
def test_a_bad_summary_is_400_naming_it(client, url, named):
    assert named in diagnostics(get(client, url, 400))


# -- string search ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("name=back", {"back-spasm-treatment-pathway", "back-spasm-order-review"}),
    ("name=BACKSPASMORDER", {"back-spasm-order-review"}),
    ("name=spasm", set()),
    ("title=back muscle spasm after", {"back-spasm-treatment-pathway", "back-spasm-order-review"}),
    ("title=Bäck mûscle", {"back-spasm-treatment-pathway", "back-spasm-order-review"}),
    ("title:contains=ORDER REVIEW", {"back-spasm-order-review"}),
    ("title:contains=pathwäy", {"back-spasm-treatment-pathway"}),
    ("name:exact=BackSpasmOrderReview", {"back-spasm-order-review"}),
    ("name:exact=backspasmorderreview", set()),
    ("name:exact=BackSpasm", set()),
    ("name=zzz,backspasmt", {"back-spasm-treatment-pathway"}),
    ("name=back&name:contains=review", {"back-spasm-order-review"}),
    ("name=", {"back-spasm-treatment-pathway", "back-spasm-order-review"}),
])
def test_string_search_starts_with_ignoring_case_and_accents_unless_asked_otherwise(client, query, expected):
    assert set(ids(get(client, f"/fhir/PlanDefinition?{query}"))) == expected


def test_a_comma_in_a_value_is_written_escaped(client, content):
    title = content.get("ValueSet", "cns-depressants")["title"]
    assert "," in title
    assert ids(get(client, f"/fhir/ValueSet?title:exact={title.replace(',', chr(92) + ',')}")) == ["cns-depressants"]
    assert ids(get(client, f"/fhir/ValueSet?title:exact={title}")) == [], "an unescaped comma separates two values"


# -- token and URI search -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("_id=maoi", ["maoi"]),
    ("_id=MAOI", []),
    ("_id=mao", []),
    ("_id=maoi,tens", ["maoi", "tens"]),
    ("_id=|maoi", ["maoi"]),
    ("status=retired", []),
    ("status=http://hl7.org/fhir/publication-status|active&_id=maoi", ["maoi"]),
    ("status=http://example.org/other|active", []),
    ("status=|active", []),
    ("status:not=retired&_id=tens", ["tens"]),
    ("status:not=active", []),
    ("version=1.0.0&_id=maoi", ["maoi"]),
    ("version=1.0", []),
    ("url:missing=false&_id=maoi", ["maoi"]),
    ("url:missing=true", []),
])
def test_token_search_is_exact(client, query, expected):
    assert ids(get(client, f"/fhir/ValueSet?{query}")) == expected


def test_uri_search_is_exact_and_a_version_after_a_bar_must_match(client, content):
    maoi = content.get("ValueSet", "maoi")
    assert ids(get(client, f"/fhir/ValueSet?url={maoi['url']}")) == ["maoi"]
    assert ids(get(client, f"/fhir/ValueSet?url={maoi['url']}|{maoi['version']}")) == ["maoi"]
    assert ids(get(client, f"/fhir/ValueSet?url={maoi['url']}|0.0.1")) == []
    assert ids(get(client, f"/fhir/ValueSet?url={maoi['url']}|")) == ["maoi"], "an empty version asks for none"
    assert ids(get(client, f"/fhir/ValueSet?url={maoi['url'].upper()}")) == []
    assert ids(get(client, f"/fhir/ValueSet?url={maoi['url'].rsplit('/', 1)[0]}")) == [], "no prefix match: :below is not supported"


# -- every bad parameter is a 400 naming it ---------------------------------------------------------------------

@pytest.mark.parametrize("query, named", [
    ("subject=Patient/1", "unsupported search parameter(s): subject"),
    ("_sort=name&_include=x", "unsupported search parameter(s): _include, _sort"),
    ("name:below=back", "the modifier :below is not supported for name"),
    ("url:below=http://example.org", "the modifier :below is not supported for url"),
    ("status:exact=active", "the modifier :exact is not supported for status"),
    ("_count=-1", "_count must be a non-negative integer"),
    ("_count=1.5", "_count must be a non-negative integer"),
    ("_count=", "_count must be a non-negative integer"),
    ("_count=1&_count=2", "_count is given more than once"),
    ("_offset=abc", "_offset must be a non-negative integer"),
    ("_count=99999999999999999999999", "_count must be a non-negative integer"),
    ("name:missing=maybe", "name:missing must be true or false"),
    ("name=back,,review", "name has an empty value between commas"),
])
def test_a_bad_search_parameter_is_a_400_naming_it(client, query, named):
    assert named in diagnostics(get(client, f"/fhir/PlanDefinition?{query}", 400))


def test_prefer_lenient_skips_unknown_parameters_and_the_self_link_shows_what_was_applied(client):
    bundle = get(client, "/fhir/PlanDefinition?name=back&subject=Patient/1&_count=1", headers={"Prefer": "return=representation, handling=lenient"})
    assert bundle["total"] == 2 and urlsplit(link(bundle, "self")).query == "name=back&_count=1"
    assert "_count must be" in diagnostics(get(client, "/fhir/PlanDefinition?_count=x", 400, headers={"Prefer": "handling=lenient"}))


# -- the CapabilityStatement says what is supported -------------------------------------------------------------

def test_the_capability_statement_lists_what_the_searches_and_operations_take(client, content):
    statement = get(client, "/fhir/metadata")
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for rtype, resource in resources.items():
        types = {p["name"]: p["type"] for p in resource["searchParam"]}
        assert types == {"_id": "token", "url": "uri", "version": "token", "name": "string", "title": "string", "status": "token"}
        for parameter in resource["searchParam"]:
            value = content.of_type(rtype)[0].get("id" if parameter["name"] == "_id" else parameter["name"])
            assert get(client, f"/fhir/{rtype}?{parameter['name']}={value}")["total"] >= 1, parameter
            assert parameter["documentation"]
        search = next(i for i in resource["interaction"] if i["code"] == "search-type")
        assert all(word in search["documentation"] for word in ("_count", "_summary", "next", "400"))
        for operation in resource.get("operation", []):
            assert "GET" in operation["documentation"], operation
    assert {o["name"] for o in resources["PlanDefinition"]["operation"]} == {"apply", "r5.apply", "data-requirements", "package"}
    assert {o["name"] for o in resources["Library"]["operation"]} == {"data-requirements"}
