"""The protocol page (GET / and GET /protocol) and the raw artifact route.

The page is generated from the loaded artifacts: the tests read the expected titles, ids, codes and URLs from
the artifacts themselves, change an artifact in a copy of the content to show that the page follows it, check
that every card link lands on an anchor, that the HTML nests properly, that what a clinician reads is free of
the engine's vocabulary, and (when Chromium is installed) that a real browser renders it under its
Content-Security-Policy, under 15,000 px tall at 1280 px wide with its sections folded, and unfolded for print.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from markupsafe import escape

from protocol.engine.content import CONTENT_DIR, PUBLICATION_FILE, PUBLICATION_NAME, load_content
from service import create_app, state_of
from service.cds_hooks.cards import INDICATORS
from service.config import Settings
from service.page import PAGE_HEADERS, PAGE_KEY, STYLESHEET, render_protocol_page, walk
from service.page.text import clinical, without_source_references
from tests.service_helpers import make_app

CONTENT = load_content()
PATHWAY = CONTENT.get("PlanDefinition", "back-spasm-treatment-pathway")
ORDER_REVIEW = CONTENT.get("PlanDefinition", "back-spasm-order-review")
PAGE_BASE = "http://localhost/protocol"


def escaped(text: str) -> str:
    """Text as the page's templates escape it."""
    return str(escape(text))


def phases() -> list[dict]:
    return [a for top in PATHWAY["action"] for a in top.get("action", []) if a.get("timingRange")]


def all_actions() -> list[dict]:
    return list(walk(PATHWAY["action"])) + list(walk(ORDER_REVIEW["action"]))


def citation_urls() -> set[str]:
    return {d["url"] for a in all_actions() for d in a.get("documentation", []) if d.get("type") == "citation" and d.get("url")}


class Tree(HTMLParser):
    """Collects ids, links, classes and nesting problems of an HTML document."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.tags: Counter[str] = Counter()
        self.classes: Counter[str] = Counter()
        self.in_svg_texts: list[str] = []
        self._text_depth = 0

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        for name, value in attrs:
            if name == "id":
                self.ids.append(value or "")
            elif name == "href":
                self.hrefs.append(value or "")
            elif name == "class":
                self.classes.update((value or "").split())

    def handle_starttag(self, tag, attrs):
        self._attrs(tag, attrs)
        if tag == "text" and "svg" in self.stack:
            self._text_depth += 1
            self.in_svg_texts.append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._attrs(tag, attrs)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}> at {self.getpos()}")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()
        if tag == "text" and self._text_depth:
            self._text_depth -= 1

    def handle_data(self, data):
        if self._text_depth:
            self.in_svg_texts[-1] += data

    def close(self):
        super().close()
        if self.stack:
            self.problems.append(f"unclosed at the end: {self.stack}")


def parse(text: str) -> Tree:
    tree = Tree()
    tree.feed(text)
    tree.close()
    return tree


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("page"))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def page(client) -> str:
    answer = client.get("/protocol")
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


@pytest.fixture(scope="module")
def tree(page) -> Tree:
    return parse(page)


# -- serving ---------------------------------------------------------------------------------------------------------


def render(app, content) -> str:
    """The page for some content, rendered with the application's templates."""
    with app.app_context():
        return render_protocol_page(content)


def test_the_page_is_served_at_the_root_and_at_protocol_as_html(client, page):
    for path in ("/", "/protocol"):
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert answer.get_data(as_text=True) == page
        assert {k: answer.headers[k] for k in PAGE_HEADERS} == PAGE_HEADERS
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy, "nothing loaded from elsewhere"
        assert "style-src 'self'" in policy and "unsafe-inline" not in policy and "script-src" not in policy, "no inline style, no script"
    assert page.startswith("<!DOCTYPE html>")
    assert client.head("/protocol").status_code == 200


def test_the_stylesheet_is_served_from_this_origin_with_a_hash_of_its_content(client, tree):
    sheets = [h for h in tree.hrefs if "static/" in h]
    assert len(sheets) == 1
    for base in (PAGE_BASE, "http://localhost/"):
        url = urljoin(base, sheets[0])
        assert urlsplit(url).path == "/static/protocol.css"
        answer = client.get(urlsplit(url).path)
        assert answer.status_code == 200 and answer.mimetype == "text/css"
        assert answer.data == STYLESHEET.read_bytes()
        answer.close()
    assert urlsplit(sheets[0]).query == "v=" + hashlib.sha256(STYLESHEET.read_bytes()).hexdigest()[:16]


def test_the_page_is_rendered_once_at_start_and_revalidated_with_its_etag(app, client):
    cached = app.extensions[PAGE_KEY][""]
    assert cached.html.decode("utf-8") == render(app, state_of(app).engine.content)
    first = client.get("/protocol")
    assert first.headers["ETag"].strip('"') == cached.etag
    again = client.get("/protocol", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and not again.data


def test_the_page_needs_no_token_even_when_the_hooks_do(tmp_path):
    app = make_app(tmp_path, allow_unauthenticated=False)
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401, "the CDS Hooks endpoints still ask for a token"
    for path in ("/", "/protocol", "/protocol/artifacts/Library-back-spasm-logic.json", "/static/protocol.css"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        answer.close()


# -- what the page shows ---------------------------------------------------------------------------------------------


def test_the_header_shows_title_version_status_date_publisher_and_canonical_base(page):
    publication = CONTENT.publication
    for key in ("title", "version", "status", "date", "publisher", "canonical"):
        assert escaped(publication[key]) in page, key
    assert f"<title>{escaped(publication['title'])}" in page


def test_every_phase_and_recommendation_title_appears(page, tree):
    assert len(phases()) == 4
    for phase in phases():
        assert escaped(phase["title"]) in page
        assert phase["id"] in tree.ids
        for recommendation in phase.get("action", []):
            assert escaped(recommendation["title"]) in page, recommendation["id"]


def test_every_action_of_both_plans_has_exactly_one_anchor(tree):
    counts = Counter(tree.ids)
    duplicates = [i for i, n in counts.items() if n > 1]
    assert duplicates == [], "ids must be unique so that each link lands on one place"
    missing = [a["id"] for a in all_actions() if a["id"] not in counts]
    assert missing == []
    for anchor in ("phase-plan", "phase-1-heat", "draft-maoi"):
        assert anchor in counts


def test_every_internal_link_has_a_target(tree):
    targets = set(tree.ids)
    broken = sorted({h for h in tree.hrefs if h.startswith("#") and h[1:] not in targets})
    assert broken == []


def test_the_cards_of_the_worked_examples_link_to_anchors_on_the_page(app, client, tree):
    from tests.test_service_cards import EXAMPLES, run

    seen = set()
    for example in EXAMPLES:
        for card in run(app, client, example)[1]:
            url = urlsplit(card["source"]["url"])
            assert url.path == "/protocol"
            assert client.get(url.path).status_code == 200
            assert url.fragment in tree.ids, f"card {card['summary']!r} links to #{url.fragment}, which the page lacks"
            seen.add(url.fragment)
    assert {"phase-plan", "draft-maoi", "withheld-older-adult"} <= seen


def rule_codes() -> set[str]:
    """The codes the protocol's actions carry whose concept has a definition (a rule), other than the red flags,
    which suspend the protocol and have their own section."""
    defined = {c["code"] for cs in CONTENT.of_type("CodeSystem") for c in cs.get("concept", []) if c.get("definition")}
    used = {c["code"] for plan in (PATHWAY, ORDER_REVIEW) for a in walk(plan["action"]) for cc in a.get("code", [])
            for c in cc.get("coding", [])}
    return (defined & used) - {"red-flags"}


def test_every_rule_code_appears_with_its_display_in_the_table(page, tree):
    system = CONTENT.get("CodeSystem", "back-spasm-recommendations")
    rules = [c for c in system["concept"] if c["code"] in rule_codes()]
    assert {f"S{n}" for n in range(1, 14)} <= {c["code"] for c in rules}, "the thirteen safety rules of the protocol among them"
    assert re.findall(r'<tr id="rule-([^"]+)">', page) == [c["code"] for c in rules], "every rule, in code order, and no other"
    for concept in rules:
        assert f"rule-{concept['code']}" in tree.ids
        row = re.search(rf'<tr id="rule-{concept["code"]}">(.*?)</tr>', page, re.S).group(1)
        assert escaped(concept["display"]) in row
        assert escaped(clinical(concept["definition"])) in row


def test_the_rule_table_shows_each_card_with_the_indicator_of_its_priority(page):
    for plan in (PATHWAY, ORDER_REVIEW):
        for top in plan["action"]:
            for action in walk([top]):
                codes = [c["code"] for cc in action.get("code", []) for c in cc.get("coding", []) if c["code"] in rule_codes()]
                for code in codes:
                    row = re.search(rf'<tr id="rule-{code}">(.*?)</tr>', page, re.S).group(1)
                    indicator = INDICATORS.get(top.get("priority"), "info")
                    assert re.search(rf'ind-{indicator}">{indicator}</span> <a href="#{re.escape(action["id"])}">', row), (code, action["id"])


def test_cards_show_rule_code_title_indicator_evidence_and_citations(page):
    for plan in (PATHWAY, ORDER_REVIEW):
        for action in plan["action"]:
            match = re.search(rf'<article class="card card-(\w+)" id="{re.escape(action["id"])}">', page)
            assert match, action["id"]
            indicator = INDICATORS.get(action.get("priority"), "info")
            assert match.group(1) == indicator
            block = page[match.start():]
            assert escaped(action["title"]) in block[:2000]
            for coding in (c for cc in action.get("code", []) for c in cc.get("coding", [])):
                if concept(coding["code"]).get("definition"):  # a rule: its code is shown and links to the rule
                    assert f'href="#rule-{coding["code"]}" title="{escaped(concept(coding["code"])["display"])}">{coding["code"]}</a>' in block[:2000]
            for doc in action.get("documentation", []):
                if doc.get("type") == "citation":
                    assert f'href="{escaped(doc["url"])}"' in block


def test_recommendations_show_evidence_rationale_and_the_order_they_propose(page):
    heat = re.search(r'<article class="rec" id="phase-1-heat">(.*?)</article>', page, re.S).group(1)
    assert "Strength of recommendation:</span> Strong" in heat
    assert "Quality of evidence:</span> Moderate quality" in heat
    assert 'class="direction dir-for">For<' in heat
    action = next(a for a in walk(PATHWAY["action"]) if a["id"] == "phase-1-heat")
    rationale = next(e["valueMarkdown"] for e in action["extension"] if e["url"].endswith("cpg-rationale"))
    assert escaped(rationale) in heat
    definition = CONTENT.resolve(action["definitionCanonical"])
    assert escaped(definition["title"]) in heat and "(service request)" in heat
    assert "Heat therapy" in heat and "266694003" in heat
    assert "Patient instruction" in heat and "never fall asleep" in heat
    medication = re.search(r'<article class="rec" id="order-cyclobenzaprine">(.*?)</article>', page, re.S).group(1)
    dosage = CONTENT.get("ActivityDefinition", "cyclobenzaprine-5mg-tid")["dosage"][0]
    assert "(medication request)" in medication and "828320" in medication
    assert escaped(dosage["text"]) in medication and escaped(dosage["patientInstruction"]) in medication


def action(action_id: str) -> dict:
    return next(a for a in all_actions() if a["id"] == action_id)


def concept(code: str) -> dict:
    system = CONTENT.get("CodeSystem", "back-spasm-recommendations")
    return next(c for c in walk_concepts(system["concept"]) if c["code"] == code)


def walk_concepts(concepts):
    for c in concepts or []:
        yield c
        yield from walk_concepts(c.get("concept"))


def grade(act: dict, suffix: str) -> str:
    ext = next(e for e in act["extension"] if e["url"].endswith(suffix))
    return ext["valueCodeableConcept"]["coding"][0]["display"]


def citations_of(*actions: dict) -> list[dict]:
    return [d for a in actions for d in a.get("documentation", []) if d.get("type") == "citation"]


def first_rule_block(page: str) -> str:
    section = re.search(r'<section id="checked-first".*?</section>', page, re.S)
    assert section, "the rule that suspends the protocol has its own section"
    start = section.group(0).index('<article class="first-rule" id="rule-red-flags">')
    return section.group(0)[start:]


def test_the_red_flag_rule_comes_first_and_says_what_suspends_the_protocol(page, tree):
    assert page.index('<section id="checked-first"') < page.index('<section id="phases"'), "red flags first (PROTOCOL section 1)"
    nav = re.search(r"<nav\b.*?</nav>", page, re.S).group(0)
    assert re.findall(r'href="#([^"]+)"', nav)[0] == "checked-first"
    block = first_rule_block(page)
    red_flags = concept("red-flags")
    assert escaped(red_flags["display"]) in block and escaped(clinical(red_flags["definition"])) in block
    assert '<span class="badge topic">red-flags</span>' in block
    # the finding that suspends it and the ValueSet that finding reads, linked to its entry and its JSON
    assert 'href="#finding-redFlagFinding"' in block
    valueset = CONTENT.resolve("http://example.org/fhir/back-spasm-cds/ValueSet/back-pain-red-flags")
    assert f'<a href="#ValueSet-back-pain-red-flags">{escaped(valueset["title"])}</a>' in block
    assert 'href="protocol/artifacts/ValueSet-back-pain-red-flags.json"' in block
    assert f"{valueset['expansion']['total']} codes" in block
    assert "ValueSet-back-pain-red-flags" in tree.ids


def test_the_red_flag_rule_shows_its_evidence_and_citations(page):
    block = first_rule_block(page)
    facts = block.split("</dl>", 1)[0]
    card = action("red-flag")
    assert f"Strength of recommendation:</span> {grade(card, 'cqf-strengthOfRecommendation')}" in facts
    assert f"Quality of evidence:</span> {grade(card, 'cqf-qualityOfEvidence')}" in facts
    assert f">{grade(card, 'cpg-directionOfRecommendation')}</span>" in facts
    docs = citations_of(card, action("draft-red-flag"))
    assert "CHOU2007" in {d["label"] for d in docs}
    for doc in docs:
        assert f'href="{escaped(doc["url"])}"' in facts, doc["label"]
    rationale = next(e["valueMarkdown"] for e in card["extension"] if e["url"].endswith("cpg-rationale"))
    assert escaped(rationale) in block


def test_the_red_flag_rule_cites_nice_ng59(page):
    nice = next(d for a in all_actions() for d in citations_of(a) if d.get("label") == "NICE-NG59")
    assert f'href="{escaped(nice["url"])}"' in first_rule_block(page).split("</dl>", 1)[0]


def test_the_red_flag_rule_shows_its_card_on_each_hook_and_what_it_holds_back(page, tree):
    block = first_rule_block(page)
    facts = block.split("</dl>", 1)[0]
    for card_id, hooks in (("red-flag", "When the chart is opened"), ("draft-red-flag", "When an order is selected or signed")):
        card = action(card_id)
        indicator = INDICATORS[card["priority"]]
        assert re.search(rf'{re.escape(hooks)}: <ul class="plain effects"><li><span class="indicator ind-{indicator}">{indicator}</span> '
                         rf'<a href="#{card_id}">', facts), card_id
        assert f'<article class="card card-{indicator}" id="{card_id}">' in block, "the card itself is shown in the section"
        assert Counter(tree.ids)[card_id] == 1
    assert INDICATORS[action("red-flag")["priority"]] == "critical"
    held = re.search(r"<dt>Held back while it applies</dt>(.*?)</dd>", facts, re.S).group(1)
    others = [a["id"] for a in PATHWAY["action"] if a["id"] != "red-flag"]
    assert others and all(f'href="#{i}"' in held for i in others), "every other patient-view card is suspended"
    assert "every other card of" in held
    for card_id in ("draft-lumbar-support", "draft-tens", "draft-traction"):
        assert f'href="#{card_id}"' in held
    assert 'href="#draft-maoi"' not in held, "the safety rules on drafts still apply"
    plan_card = re.search(r'<article class="card card-info" id="phase-plan">.*?<p class="card-meta">(.*?)</p>', page, re.S)
    held_note = re.search(r'<span class="held-back">(.*?)</span>', plan_card.group(1), re.S)
    assert held_note and 'href="#rule-red-flags"' in held_note.group(1), "the plan card says what suspends it"


def test_s13_is_in_the_rule_table_with_its_finding_evidence_and_cards(page):
    s13 = concept("S13")
    row = re.search(r'<tr id="rule-S13">(.*?)</tr>', page, re.S).group(1)
    assert escaped(s13["display"]) in row and escaped(clinical(s13["definition"])) in row
    assert 'href="#finding-anticholinergicFinding"' in row and 'href="#ValueSet-anticholinergic-cautions"' in row
    note, draft = action("anticholinergic-note"), action("draft-anticholinergic")
    assert f"{grade(note, 'cqf-strengthOfRecommendation').lower()}, {grade(note, 'cqf-qualityOfEvidence').lower()}" in row
    docs = citations_of(note, draft)
    assert docs
    for doc in docs:
        assert f'href="{escaped(doc["url"])}"' in row, doc["label"]
    cells = re.findall(r"<td data-label=[^>]*>(.*?)</td>", row, re.S)
    proposal, draft_cell = cells[1], cells[2]  # what it checks, then one column per plan: the pathway, then order review
    assert 'href="#anticholinergic-note"' in proposal and 'href="#cyclobenzaprine-proposal"' in proposal
    assert 'the card becomes <span class="indicator ind-warning">warning</span>' in proposal, "S13 makes the proposal card a warning"
    assert f'ind-{INDICATORS[draft["priority"]]}">' in draft_cell and 'href="#draft-anticholinergic"' in draft_cell
    s12 = re.search(r'<tr id="rule-S12">(.*?)</tr>', page, re.S).group(1)
    assert 'href="#cns-depressant-note"' in s12 and "the card becomes" not in s12, "S12 alone keeps the proposal informational"
    card = re.search(r'<article class="card card-info" id="cyclobenzaprine-proposal">.*?<p class="card-meta">(.*?)</p>', page, re.S).group(1)
    assert re.search(r'ind-warning">warning</span> when <a class="badge rule" href="#rule-S7"[^>]*>S7</a> or '
                     r'<a class="badge rule" href="#rule-S13"[^>]*>S13</a> applies', card), "the rules that make the proposal a warning"


def test_the_rule_table_and_the_first_section_follow_the_artifacts(app, tmp_path):
    folder = copy_content(tmp_path)
    system_url = "http://example.org/fhir/back-spasm-cds/CodeSystem/back-spasm-recommendations"

    def add_s14(system):
        system["concept"].append({"code": "S14", "display": "A new rule <14>", "definition": "Defined in the CodeSystem only."})
        system["concept"].append({"code": "Q2", "display": "A rule of another name", "definition": "Any code with a definition is a rule."})

    def add_s14_card(plan):
        card = json.loads(json.dumps(next(a for a in plan["action"] if a["id"] == "draft-anticholinergic")))
        card.update(id="draft-new-rule", title="A new rule card", priority="stat")
        card["code"] = [{"coding": [{"system": system_url, "code": "S14", "display": "A new rule"}]}]
        other = json.loads(json.dumps(card))
        other.update(id="draft-other-rule", title="Another rule card", priority="routine")
        other["code"] = [{"coding": [{"system": system_url, "code": "Q2"}]}]
        plan["action"] += [card, other]

    def no_suspension(library):
        for ext in library["extension"]:
            if ext["url"].endswith("/variable") and ext["valueExpression"]["name"] == "planApplies":
                ext["valueExpression"]["expression"] = "%inScope"

    edit(folder / "CodeSystem-back-spasm-recommendations.json", add_s14)
    edit(folder / "PlanDefinition-back-spasm-order-review.json", add_s14_card)
    page = render(app, load_content(folder, tmp_path / "publication.json"))
    tree = parse(page)
    assert tree.problems == []
    rows = re.findall(r'<tr id="rule-(S\d+)">', page)
    assert rows == [f"S{n}" for n in range(1, 15)], "rules in numeric order, beyond S13 too"
    assert re.search(r'<tr id="rule-Q2">.*?A rule of another name.*?<a href="#draft-other-rule">', page, re.S), "no code pattern is assumed"
    row = re.search(r'<tr id="rule-S14">(.*?)</tr>', page, re.S).group(1)
    assert "A new rule &lt;14&gt;" in row and "Defined in the CodeSystem only." in row
    assert re.search(r'ind-critical">critical</span> <a href="#draft-new-rule">', row)
    assert 'href="#finding-anticholinergicFinding"' in row, "its finding is read from the action's conditions"

    edit(folder / "Library-back-spasm-logic.json", no_suspension)
    page = render(app, load_content(folder, tmp_path / "publication.json"))
    tree = parse(page)
    assert tree.problems == []
    assert 'id="checked-first"' not in page, "no card suspends the others any more: no such section"
    assert Counter(tree.ids)["red-flag"] == 1 and Counter(tree.ids)["draft-red-flag"] == 1, "the cards are still on the page"
    assert 'class="held-back"' not in page


def test_every_citation_url_is_a_link(tree):
    hrefs = set(tree.hrefs)
    assert citation_urls() and citation_urls() <= hrefs


def test_the_library_findings_and_data_requirements_are_listed(page, tree):
    library = CONTENT.get("Library", "back-spasm-logic")
    variables = [e["valueExpression"] for e in library["extension"] if e["url"].endswith("/variable")]
    assert len(variables) > 30
    for variable in variables:
        assert f"finding-{variable['name']}" in tree.ids
        block = re.search(rf'<div class="finding" id="finding-{variable["name"]}">(.*?)</div>', page, re.S).group(1)
        assert escaped(without_source_references(variable["description"])) in block
        assert "<details>" in block
        text = re.sub(r"<[^>]+>", "", block.split("<pre>", 1)[1])
        assert html.unescape(text).strip().startswith(variable["expression"].strip()[:40])
    for requirement in library["dataRequirement"]:
        row = re.search(rf'<tr id="data-{requirement["id"]}">(.*?)</tr>', page, re.S).group(1)
        assert requirement["type"] in row
        for code_filter in requirement.get("codeFilter", []):
            assert escaped(CONTENT.resolve(code_filter["valueSet"])["title"]) in row
        for date_filter in requirement.get("dateFilter", []):
            assert "within the last 72 h" in row, date_filter


def test_the_page_links_to_the_json_of_every_artifact_and_the_links_resolve(client, tree):
    raw = {urljoin(PAGE_BASE, h) for h in tree.hrefs if h.startswith("protocol/artifacts/")}
    fhir = {urljoin(PAGE_BASE, h) for h in tree.hrefs if h.startswith("fhir/")}
    expected = {f"{r['resourceType']}-{r['id']}" for r in CONTENT.resources}
    assert {urlsplit(u).path for u in raw} == {f"/protocol/artifacts/{name}.json" for name in expected}
    assert {urlsplit(u).path for u in fhir} == {f"/fhir/{r['resourceType']}/{r['id']}" for r in CONTENT.resources}
    for url in sorted(raw):
        answer = client.get(urlsplit(url).path)
        assert answer.status_code == 200, url
        assert answer.mimetype == "application/fhir+json"


def test_the_raw_artifact_route_returns_the_files_json(client):
    for resource in CONTENT.resources:
        name = f"{resource['resourceType']}-{resource['id']}"
        answer = client.get(f"/protocol/artifacts/{name}.json")
        assert answer.status_code == 200
        assert json.loads(answer.data) == json.loads(CONTENT.file_of(resource).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["PlanDefinition-nope", "Nope-back-spasm-logic", "Library", "library-back-spasm-logic"])
def test_an_unknown_artifact_is_a_json_404(client, name):
    answer = client.get(f"/protocol/artifacts/{name}.json")
    assert answer.status_code == 404
    body = answer.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert name in body["issue"][0]["diagnostics"]


# -- structure ---------------------------------------------------------------------------------------------------------


def test_the_html_nests_properly(page, tree):
    assert tree.problems == []
    assert tree.tags["html"] == 1 and tree.tags["body"] == 1 and tree.tags["h1"] == 1 and tree.tags["main"] == 1
    assert tree.tags["script"] == 0 and tree.tags["style"] == 0, "no script, no inline style"
    assert tree.tags["link"] == 1, "one stylesheet"
    assert not re.search(r"<[^>]+\sstyle=", page) and not re.search(r"<[^>]+\son[a-z]+=", page), "no style or event attributes"


def test_the_svg_time_line_has_one_band_per_phase_with_title_desc_and_text(page, tree):
    assert tree.tags["svg"] == 1
    svg = re.search(r"<svg\b.*?</svg>", page, re.S).group(0)
    assert 'role="img"' in svg and "<title" in svg and "<desc" in svg
    assert tree.classes["phase-band"] == len(phases()) == len(re.findall(r'class="phase-band\b', svg))
    bands = re.findall(r'class="phase-band[^"]*"[^>]*data-action="([^"]+)"', svg)
    assert bands == [p["id"] for p in phases()]
    desc = re.search(r"<desc[^>]*>(.*?)</desc>", svg, re.S).group(1)
    for phase in phases():
        assert escaped(phase["title"]) in desc
        assert phase["title"].split(":")[0] in tree.in_svg_texts
    for label in ("48 h", "7 days", "28 days"):
        assert label in tree.in_svg_texts


# -- generated from the artifacts ----------------------------------------------------------------------------------------


def copy_content(tmp_path: Path) -> Path:
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder, ignore=shutil.ignore_patterns(PUBLICATION_NAME))
    shutil.copy(PUBLICATION_FILE, tmp_path / "publication.json")
    return folder


def edit(path: Path, change) -> None:
    resource = json.loads(path.read_text(encoding="utf-8"))
    change(resource)
    path.write_text(json.dumps(resource, indent=2), encoding="utf-8")


def test_a_changed_artifact_changes_the_page(tmp_path):
    folder = copy_content(tmp_path)
    new_phase = "Phase 1: first two days <of care> & rest"
    new_definition = "Warm pack for the back (changed title)"

    def retitle_phase(plan):
        plan["action"][0]["action"][0]["title"] = new_phase

    edit(folder / "PlanDefinition-back-spasm-treatment-pathway.json", retitle_phase)
    edit(folder / "ActivityDefinition-heat-therapy-immediate.json", lambda ad: ad.update(title=new_definition))
    edit(tmp_path / "publication.json", lambda pub: pub.update(version="9.8.7"))
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "cds.sqlite"), "content_dir": str(folder)})
    client = create_app(settings).test_client()
    page = client.get("/protocol").get_data(as_text=True)
    assert escaped(new_phase) in page and "<of care>" not in page, "new text shown, and escaped"
    old = escaped(phases()[0]["title"])
    headings = re.findall(r"<h3[^>]*>(.*?)</h3>", page)
    assert old not in headings and escaped(new_phase) in headings
    desc = re.search(r"<desc[^>]*>(.*?)</desc>", page, re.S).group(1)
    assert old not in desc and escaped(new_phase) in desc, "the time line follows the artifact too"
    assert new_definition in page and "9.8.7" in page
    assert parse(page).problems == []
    served = client.get("/protocol/artifacts/ActivityDefinition-heat-therapy-immediate.json").get_json()
    assert served["title"] == new_definition


# -- for clinicians first --------------------------------------------------------------------------------------------------


def clinical_part(page: str) -> str:
    """What a clinician reads: the page up to the section for implementers, as text with its tooltips."""
    part = page[:page.index('<section id="implementers"')]
    tooltips = " ".join(re.findall(r'title="([^"]*)"', part))
    return html.unescape(re.sub(r"<[^>]+>", " ", part) + " " + tooltips)


def test_what_a_clinician_reads_has_no_engine_vocabulary_or_template_slots(page):
    text = clinical_part(page)
    for words in ("CDS Hooks card", "top-level action", "dynamicValue", "PlanDefinition", "ActivityDefinition", "FHIRPath",
                  "[0]", "patient-view", "order-select", "order-sign", "ServiceRequest", "MedicationRequest"):
        assert words not in text, words
    assert not re.search(r"%[A-Za-z]", text), "no %finding"
    library = CONTENT.get("Library", "back-spasm-logic")
    names = [e["valueExpression"]["name"] for e in library["extension"] if e["url"].endswith("/variable")]
    shown = [n for n in names if re.search(r"[A-Z]", n) and re.search(rf"\b{n}\b", text)]
    assert shown == [], "no finding names in the clinical part"
    assert "spasmDay" in page, "the implementers' part keeps the technical view"
    assert not re.search(r"\bPROTOCOL section", page), "no section of a document the reader does not have"


def test_card_text_computed_from_the_record_reads_as_text_with_gaps(page):
    card = re.search(r'<article class="card card-critical" id="draft-maoi">(.*?)</article>', page, re.S).group(1)
    text = re.search(r'<p class="card-text">(.*?)</p>', card, re.S).group(1)
    assert text.startswith("The patient takes, or stopped less than 14 days ago, <span class=\"slot\"")
    assert "Cyclobenzaprine must not be given with an MAO inhibitor" in text and "maoiName" not in text
    plan = re.search(r'<article class="card card-info" id="phase-plan-in-place">.*?<p class="card-text">(.*?)</p>', page, re.S).group(1)
    assert "Ask about red flags of serious spinal pathology at every visit" in plan and "carePlanInPlace" not in plan


def test_the_page_opens_with_a_table_of_contents_and_the_safety_rules_near_the_top(page, tree):
    nav = re.search(r"<nav\b.*?</nav>", page, re.S).group(0)
    sections = re.findall(r'<section id="([^"]+)" aria-labelledby=', page)
    assert [s for s in sections if f'href="#{s}"' not in nav and s not in [p["id"] for p in phases()]] == [], "every section is listed"
    for phase in phases():
        assert f'href="#{phase["id"]}"' in nav
    order = [page.index(f'<section id="{s}"') for s in ("checked-first", "safety-rules", "phases", "implementers")]
    assert order == sorted(order), "red flags, then the safety rules, then the phases; implementers last"
    assert sections[-1] == "implementers"


def test_long_sections_are_folded(page):
    for phase in phases():
        section = re.search(rf'<section class="phase" id="{phase["id"]}".*?</section>', page, re.S).group(0)
        for recommendation in phase.get("action", []):
            assert re.search(rf'<details class="more">.*id="{recommendation["id"]}"', section, re.S), recommendation["id"]
    for folded in ("plans", "artifacts", "logic", "card-logic", "terminology"):
        assert f'<details class="more" id="{folded}">' in page, folded
    assert re.search(r'<section id="references".*?<details class="more">', page, re.S)


def test_the_stylesheet_unfolds_the_page_for_print_without_navigation():
    css = STYLESHEET.read_text(encoding="utf-8")
    start = css.index("@media print{")
    depth, end = 0, start
    for end in range(start, len(css)):
        depth += {"{": 1, "}": -1}.get(css[end], 0)
        if depth == 0 and css[end] == "}":
            break
    printed = css[start:end]
    assert re.search(r"details::details-content\{content-visibility:visible", printed)
    assert re.search(r"nav[^{]*\{display:none", printed)


# -- a real browser ------------------------------------------------------------------------------------------------------


def chromium_binary() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_BIN"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def png_facts(path: Path) -> tuple[int, int, float]:
    """Width, height and the share of pixels that are not near-white, from an 8-bit RGB(A) PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    previous, ink = bytearray(stride), 0
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if row % 8 == 0:  # a sample of rows is enough
            ink += sum(1 for i in range(0, stride, channels * 4) if min(line[i:i + 3]) < 200)
        previous = line
    sampled = ((height + 7) // 8) * ((stride + channels * 4 - 1) // (channels * 4))
    return width, height, ink / sampled


NO_CHROMIUM = pytest.mark.skipif(chromium_binary() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium); "
                                                                   "the real-browser checks of the protocol page need it")
MAX_HEIGHT = 15_000  #: px, at 1280 px wide with the long sections folded


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    """The service on a loopback port, serving the page, its stylesheet and the artifacts."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, make_app(tmp_path_factory.mktemp("live")), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/protocol"
    server.shutdown()
    thread.join(10)


def browser_args(profile: Path) -> list[str]:
    """Headless Chromium without sandbox, GPU or background traffic, with its own profile."""
    return [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]


#: Puts the two pipe ends on the descriptors 3 and 4 that --remote-debugging-pipe reads and writes, then starts Chromium.
PIPE_LAUNCHER = ("import os, sys\n"
                 "ends = [os.dup(int(fd)) for fd in sys.argv[1:3]]\n"
                 "for fd in sys.argv[1:3]: os.close(int(fd))\n"
                 "os.dup2(ends[0], 3); os.dup2(ends[1], 4)\n"
                 "os.set_inheritable(3, True); os.set_inheritable(4, True)\n"
                 "os.execv(sys.argv[3], sys.argv[3:])\n")


class DevTools:
    """Headless Chromium driven over the DevTools pipe (its file descriptors 3 and 4): load a page, evaluate
    JavaScript in it, emulate print. No library beyond the standard one."""

    def __init__(self, profile: Path, timeout: float = 60):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        self.process = subprocess.Popen([sys.executable, "-c", PIPE_LAUNCHER, str(to_browser), str(from_browser), *browser_args(profile),
                                         "--remote-debugging-pipe", "about:blank"],
                                        pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "HOME": str(profile)})
        os.close(to_browser)
        os.close(from_browser)
        self.timeout, self._buffer, self._next = timeout, b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command and wait for its answer (events in between are skipped)."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"no answer to {method}")
                chunk = os.read(self._read, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def page(self, method: str, **params) -> dict:
        """A command to the page."""
        return self.call(method, self.session, **params)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def open(self, url: str, width: int) -> None:
        """Load a page at this window width and wait until it and its fonts are ready."""
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while self.evaluate("document.readyState") != "complete" or self.evaluate("location.href") != url:
            assert time.monotonic() < deadline, f"{url} did not load"
            time.sleep(0.1)
        self.evaluate("document.fonts.ready.then(() => true)")

    def close(self) -> None:
        """Stop the browser and close the pipe."""
        self.process.kill()
        self.process.wait(30)
        os.close(self._read)
        os.close(self._write)


@NO_CHROMIUM
def test_the_page_renders_in_headless_chromium(live_url, tmp_path):
    url = live_url
    profile, shot = tmp_path / "profile", tmp_path / "page.png"
    common = browser_args(profile) + ["--enable-logging=stderr"]
    env = {**os.environ, "HOME": str(tmp_path)}
    shot_run = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1280,4000", url],
                              capture_output=True, text=True, timeout=180, env=env)
    dom_run = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=180, env=env)
    assert shot.is_file(), shot_run.stderr[-2000:]
    width, height, ink = png_facts(shot)
    assert (width, height) == (1280, 4000)
    assert shot.stat().st_size > 50_000 and ink > 0.02, f"the screenshot looks empty ({ink:.1%} of pixels drawn)"
    dom = dom_run.stdout
    assert dom_run.returncode == 0 and "<svg" in dom, dom_run.stderr[-2000:]
    for phase in phases():
        assert html.escape(phase["title"], quote=False) in dom
    for log in (shot_run.stderr, dom_run.stderr):
        assert "Content Security Policy" not in log and "Refused to" not in log, "the page must not need anything its CSP blocks"


@NO_CHROMIUM
def test_the_page_is_short_with_its_sections_folded_and_unfolds_for_print(live_url):
    profile = Path(tempfile.mkdtemp(prefix="page-devtools-"))
    browser = DevTools(profile)
    try:
        browser.open(live_url, 1280)
        assert browser.evaluate("document.styleSheets.length === 1 && document.styleSheets[0].cssRules.length > 50"), \
            "the stylesheet loads under the page's Content-Security-Policy"
        assert browser.evaluate("document.querySelectorAll('details[open]').length") == 0
        height = browser.evaluate("document.documentElement.scrollHeight")
        assert height < MAX_HEIGHT, f"{height} px tall at 1280 px wide with the sections folded"
        assert browser.evaluate("document.documentElement.scrollWidth") <= 1280, "no sideways scrolling"
        hidden = "document.getElementById('phase-1-heat').checkVisibility()"
        assert browser.evaluate(hidden) is False, "a recommendation in full is folded"
        assert browser.evaluate("document.getElementById('draft-maoi').checkVisibility()"), "cards are not folded"
        browser.page("Emulation.setEmulatedMedia", media="print")
        assert browser.evaluate(hidden) is True, "printing unfolds the details"
        assert browser.evaluate("document.querySelector('nav').checkVisibility()") is False, "no navigation in print"
        browser.page("Emulation.setEmulatedMedia", media="")
        browser.open(live_url + "#phase-1-heat", 1280)
        assert browser.evaluate(hidden) is True, "a link to a folded recommendation opens it"
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)
