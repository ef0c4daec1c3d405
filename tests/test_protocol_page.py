"""The protocol page (GET / and GET /protocol) and the raw artifact route.

The page is generated from the loaded artifacts: the tests read the expected titles, ids, codes and URLs from
the artifacts themselves, change an artifact in a copy of the content to show that the page follows it, check
that every card link lands on an anchor, that the HTML nests properly, and (when Chromium is installed) that a
real browser renders it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import threading
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from protocol.content import CONTENT_DIR, PUBLICATION_FILE, load_content
from service import create_app, state_of
from service.cards import INDICATORS
from service.config import Settings
from service.page import PAGE_KEY, render_protocol_page, walk
from tests.service_helpers import make_app

CONTENT = load_content()
PATHWAY = CONTENT.get("PlanDefinition", "back-spasm-treatment-pathway")
ORDER_REVIEW = CONTENT.get("PlanDefinition", "back-spasm-order-review")
PAGE_BASE = "http://localhost/protocol"


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


def test_the_page_is_served_at_the_root_and_at_protocol_as_html(client, page):
    for path in ("/", "/protocol"):
        answer = client.get(path)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert answer.get_data(as_text=True) == page
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"], "self-contained: nothing loaded from elsewhere"
    assert page.startswith("<!DOCTYPE html>")
    assert client.head("/protocol").status_code == 200


def test_the_page_is_rendered_once_at_start_and_revalidated_with_its_etag(app, client):
    cached = app.extensions[PAGE_KEY]
    assert cached.html.decode("utf-8") == render_protocol_page(state_of(app).engine.content)
    first = client.get("/protocol")
    assert first.headers["ETag"].strip('"') == cached.etag
    again = client.get("/protocol", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and not again.data


def test_the_page_needs_no_token_even_when_the_hooks_do(tmp_path):
    app = make_app(tmp_path, allow_unauthenticated=False)
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401, "the CDS Hooks endpoints still ask for a token"
    for path in ("/", "/protocol", "/protocol/artifacts/Library-back-spasm-logic.json"):
        assert client.get(path).status_code == 200, path


# -- what the page shows ---------------------------------------------------------------------------------------------


def test_the_header_shows_title_version_status_date_publisher_and_canonical_base(page):
    publication = CONTENT.publication
    for key in ("title", "version", "status", "date", "publisher", "canonical"):
        assert html.escape(publication[key]) in page, key
    assert f"<title>{html.escape(publication['title'])}" in page


def test_every_phase_and_recommendation_title_appears(page, tree):
    assert len(phases()) == 4
    for phase in phases():
        assert html.escape(phase["title"]) in page
        assert phase["id"] in tree.ids
        for recommendation in phase.get("action", []):
            assert html.escape(recommendation["title"]) in page, recommendation["id"]


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


def test_every_rule_code_appears_with_its_display_in_the_table(page, tree):
    system = CONTENT.get("CodeSystem", "back-spasm-recommendations")
    rules = [c for c in system["concept"] if re.fullmatch(r"S\d+", c["code"])]
    assert [c["code"] for c in rules] == [f"S{n}" for n in range(1, 14)]
    for concept in rules:
        assert f"rule-{concept['code']}" in tree.ids
        row = re.search(rf'<tr id="rule-{concept["code"]}">(.*?)</tr>', page, re.S).group(1)
        assert html.escape(concept["display"]) in row
        assert html.escape(concept["definition"]) in row


def test_the_rule_table_shows_each_card_with_the_indicator_of_its_priority(page):
    for plan in (PATHWAY, ORDER_REVIEW):
        for top in plan["action"]:
            for action in walk([top]):
                codes = [c["code"] for cc in action.get("code", []) for c in cc.get("coding", []) if re.fullmatch(r"S\d+", c["code"])]
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
            assert html.escape(action["title"]) in block[:2000]
            for coding in (c for cc in action.get("code", []) for c in cc.get("coding", [])):
                assert f">{coding['code']}</span>" in block[:2000]
            for doc in action.get("documentation", []):
                if doc.get("type") == "citation":
                    assert f'href="{html.escape(doc["url"])}"' in block


def test_recommendations_show_evidence_rationale_and_the_order_they_propose(page):
    heat = re.search(r'<article class="rec" id="phase-1-heat">(.*?)</article>', page, re.S).group(1)
    assert "Strength of recommendation:</span> Strong" in heat
    assert "Quality of evidence:</span> Moderate quality" in heat
    assert 'class="direction dir-for">For<' in heat
    action = next(a for a in walk(PATHWAY["action"]) if a["id"] == "phase-1-heat")
    rationale = next(e["valueMarkdown"] for e in action["extension"] if e["url"].endswith("cpg-rationale"))
    assert html.escape(rationale) in heat
    definition = CONTENT.resolve(action["definitionCanonical"])
    assert html.escape(definition["title"]) in heat and "ServiceRequest" in heat
    assert "Heat therapy" in heat and "266694003" in heat
    assert "Patient instruction" in heat and "never fall asleep" in heat
    medication = re.search(r'<article class="rec" id="order-cyclobenzaprine">(.*?)</article>', page, re.S).group(1)
    dosage = CONTENT.get("ActivityDefinition", "cyclobenzaprine-5mg-tid")["dosage"][0]
    assert "MedicationRequest" in medication and "828320" in medication
    assert html.escape(dosage["text"]) in medication and html.escape(dosage["patientInstruction"]) in medication


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
        assert html.escape(variable["description"]) in block
        assert "<details>" in block
        text = re.sub(r"<[^>]+>", "", block.split("<pre>", 1)[1])
        assert html.unescape(text).strip().startswith(variable["expression"].strip()[:40])
    for requirement in library["dataRequirement"]:
        row = re.search(rf'<tr id="data-{requirement["id"]}">(.*?)</tr>', page, re.S).group(1)
        assert requirement["type"] in row
        for code_filter in requirement.get("codeFilter", []):
            assert html.escape(CONTENT.resolve(code_filter["valueSet"])["title"]) in row
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


def test_the_html_nests_properly(tree):
    assert tree.problems == []
    assert tree.tags["html"] == 1 and tree.tags["body"] == 1 and tree.tags["h1"] == 1 and tree.tags["main"] == 1
    assert tree.tags["script"] == 0 and tree.tags["link"] == 0, "self-contained: inline CSS only, no scripts"


def test_the_svg_time_line_has_one_band_per_phase_with_title_desc_and_text(page, tree):
    assert tree.tags["svg"] == 1
    svg = re.search(r"<svg\b.*?</svg>", page, re.S).group(0)
    assert 'role="img"' in svg and "<title" in svg and "<desc" in svg
    assert tree.classes["phase-band"] == len(phases()) == len(re.findall(r'class="phase-band\b', svg))
    bands = re.findall(r'class="phase-band[^"]*"[^>]*data-action="([^"]+)"', svg)
    assert bands == [p["id"] for p in phases()]
    desc = re.search(r"<desc[^>]*>(.*?)</desc>", svg, re.S).group(1)
    for phase in phases():
        assert html.escape(phase["title"]) in desc
        assert phase["title"].split(":")[0] in tree.in_svg_texts
    for label in ("48 h", "7 days", "28 days"):
        assert label in tree.in_svg_texts


# -- generated from the artifacts ----------------------------------------------------------------------------------------


def copy_content(tmp_path: Path) -> Path:
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder)
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
    assert html.escape(new_phase) in page and "<of care>" not in page, "new text shown, and escaped"
    old = html.escape(phases()[0]["title"])
    assert f"<h3>{old}</h3>" not in page and f"<h3>{html.escape(new_phase)}</h3>" in page
    desc = re.search(r"<desc[^>]*>(.*?)</desc>", page, re.S).group(1)
    assert old not in desc and html.escape(new_phase) in desc, "the time line follows the artifact too"
    assert new_definition in page and "9.8.7" in page
    assert parse(page).problems == []
    served = client.get("/protocol/artifacts/ActivityDefinition-heat-therapy-immediate.json").get_json()
    assert served["title"] == new_definition


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


@pytest.mark.skipif(chromium_binary() is None, reason="Chromium is not installed (Debian: apt-get install -y chromium); "
                                                      "the real-browser check of the protocol page needs it")
def test_the_page_renders_in_headless_chromium(tmp_path):
    from werkzeug.serving import make_server

    app = make_app(tmp_path)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/protocol"
        profile, shot = tmp_path / "profile", tmp_path / "page.png"
        common = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
                  f"--user-data-dir={profile}"]
        env = {**os.environ, "HOME": str(tmp_path)}
        shot_run = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1280,4000", url],
                                  capture_output=True, text=True, timeout=180, env=env)
        dom_run = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=180, env=env)
    finally:
        server.shutdown()
        thread.join(10)
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
