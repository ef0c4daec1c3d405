"""The feedback report: figures, CSV and charts from a database filled by real hook calls and feedback posts; /report
behind the operator token only; ``back-spasm-cds report --out``; the page in headless Chromium when it is installed.

The expected figures are counted here from what the test sent (which card got which feedback, in which week it was
issued), not read back through the report's own code.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import tempfile
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from service import create_app, state_of
from service.cli import main
from service.config import ConfigError, Settings
from tests.patients import CLOCK, CYCLOBENZAPRINE_10, DATA, PHENELZINE, TENS_DEVICE, Patient
from tests.service_helpers import SERVICES, cards_of, hook_body, make_app, shared_engine, topic
from tests.storage_backends import fresh_database, needs_postgresql

TOKEN = "op-" + "7Hq2vK9xLr4Wm8Tz3Nc6Yb1Fd5Gs0Jp"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The three weeks the cards are issued in (the store's clock is moved; the clinical clock stays at CLOCK).
ISSUE_TIMES = (CLOCK - timedelta(days=14), CLOCK - timedelta(days=7), CLOCK)
RECOMMENDATIONS = "http://example.org/fhir/back-spasm-cds/CodeSystem/back-spasm-recommendations"


@dataclass
class Sent:
    """What the test did, from which it counts the expected figures."""

    outcome: dict[str, str | None] = field(default_factory=dict)  #: card uuid -> latest outcome sent (None: no feedback)
    topic: dict[str, str] = field(default_factory=dict)  #: card uuid -> topic code
    action: dict[str, str] = field(default_factory=dict)  #: card uuid -> action id, from the card's source label's anchor
    week: dict[str, str] = field(default_factory=dict)  #: card uuid -> ISO week of issue
    reason: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  #: overridden card -> (system, code) of its latest reason
    offered: dict[str, list[dict]] = field(default_factory=dict)  #: topic -> override reasons its cards offered
    items: int = 0
    unmatched: int = 0
    record_text: set[str] = field(default_factory=set)  #: text from the patients' records and the requests, never to be in a report


def week_of(moment: datetime) -> str:
    year, week, _ = moment.date().isocalendar()
    return f"{year}-W{week:02d}"


class Filler:
    """Issues cards through the service and sends feedback about them, noting everything it sent."""

    def __init__(self, app) -> None:
        self.app, self.client, self.sent = app, app.test_client(), Sent()
        self.now = ISSUE_TIMES[0]
        self.stamps = 0
        state_of(app).store.clock = lambda: self.now

    def issue(self, hook: str, patient: Patient, drafts: list[dict], when: datetime) -> list[dict]:
        self.now = when
        body = hook_body(self.app, hook, patient, drafts)
        cards = cards_of(self.client, hook, body)
        self.sent.record_text |= {patient.id, body["hookInstance"], *(d["id"] for d in drafts)}
        self.sent.record_text |= {c["display"] for r in [*patient.resources, *drafts] for cc in _concepts(r) for c in cc.get("coding", [])
                                  if r["resourceType"] in ("MedicationStatement", "MedicationRequest", "DeviceRequest")}
        for card in cards:
            self.sent.outcome[card["uuid"]] = None
            self.sent.topic[card["uuid"]] = topic(card)
            self.sent.action[card["uuid"]] = card["source"]["url"].split("#")[-1]  # the card's anchor on the protocol page
            self.sent.week[card["uuid"]] = week_of(when)
            if card.get("overrideReasons"):
                self.sent.offered[topic(card)] = card["overrideReasons"]
        return cards

    def feedback(self, service: str, card: dict, outcome: str, *, suggestion: str | None = None, reason: dict | None = None,
                 card_uuid: str | None = None) -> None:
        self.stamps += 1
        item: dict = {"card": card_uuid or card["uuid"], "outcome": outcome,
                      "outcomeTimestamp": (CLOCK + timedelta(seconds=self.stamps)).isoformat().replace("+00:00", "Z")}
        if outcome == "accepted":
            item["acceptedSuggestions"] = [{"id": suggestion}]
        elif reason is not None:
            item["overrideReason"] = {"reason": reason, "userComment": "Patient Jane Roe prefers to continue"}
        answer = self.client.post(f"/cds-services/{service}/feedback", json={"feedback": [item]})
        assert answer.status_code == 200 and answer.json["stored"] == 1, answer.get_data(as_text=True)
        self.sent.items += 1
        if card_uuid is not None:
            self.sent.unmatched += 1
            return
        self.sent.outcome[card["uuid"]] = outcome
        if outcome == "overridden":
            system = reason.get("system") if reason else None
            code = reason.get("code") if reason else None
            if code and not system:  # sent by code alone: the report names it with the system of the card's reason
                system = next(r["system"] for r in card["overrideReasons"] if r["code"] == code)
            self.sent.reason[card["uuid"]] = (system, code)
        else:
            self.sent.reason.pop(card["uuid"], None)


def _concepts(resource: dict) -> list[dict]:
    return [v for v in resource.values() if isinstance(v, dict) and "coding" in v]


def one(cards: list[dict], code: str) -> dict:
    found = [c for c in cards if topic(c) == code]
    assert len(found) == 1, [topic(c) for c in cards]
    return found[0]


def maoi_patient(n: int) -> tuple[Patient, list[dict]]:
    p = Patient(52, patient_id=f"report-maoi-{n}")
    p.spasm(20)
    p.medication(PHENELZINE, kind="statement")
    return p, [p.draft_medication(CYCLOBENZAPRINE_10, draft_id=f"rx-maoi-{n}")]


def long_course_patient(n: int) -> tuple[Patient, list[dict]]:
    p = Patient(38, patient_id=f"report-course-{n}")
    p.spasm(20)
    return p, [p.draft_medication(CYCLOBENZAPRINE_10, days=30, draft_id=f"rx-30-{n}")]


def tens_patient(n: int) -> tuple[Patient, list[dict]]:
    p = Patient(45, patient_id=f"report-tens-{n}")
    p.spasm(20)
    return p, [p.draft_service(TENS_DEVICE, resource_type="DeviceRequest", draft_id=f"tens-{n}")]


def fill(app) -> Sent:
    """Cards of four recommendations and rules over three weeks, with feedback of every kind."""
    f = Filler(app)
    sign = SERVICES["order-sign"]
    week = iter(ISSUE_TIMES * 10)
    # S1 (critical): overridden once with each reason the card offers (one of them by code alone), accepted once, ignored once
    first = one(f.issue("order-sign", *maoi_patient(0), next(week)), "S1")
    for n, reason in enumerate(first["overrideReasons"]):
        card = first if n == 0 else one(f.issue("order-sign", *maoi_patient(n), next(week)), "S1")
        f.feedback(sign, card, "overridden", reason={"code": reason["code"]} if n == 1 else reason)
    card = one(f.issue("order-sign", *maoi_patient(10), next(week)), "S1")
    f.feedback(sign, card, "accepted", suggestion=card["suggestions"][0]["uuid"])
    f.issue("order-sign", *maoi_patient(11), next(week))
    # S8: accepted, overridden without a reason, overridden then accepted (the latest counts), ignored
    cards = [one(f.issue("order-sign", *long_course_patient(n), next(week)), "S8") for n in range(4)]
    f.feedback(sign, cards[0], "accepted", suggestion=cards[0]["suggestions"][0]["uuid"])
    f.feedback(sign, cards[1], "overridden")
    f.feedback(sign, cards[2], "overridden", reason=cards[2]["overrideReasons"][0])
    f.feedback(sign, cards[2], "accepted", suggestion=cards[2]["suggestions"][-1]["uuid"])
    # TENS (a recommendation against an order): overridden with each of its reasons, accepted, and ignored twice
    first = one(f.issue("order-sign", *tens_patient(0), next(week)), "tens")
    for n, reason in enumerate(first["overrideReasons"]):
        card = first if n == 0 else one(f.issue("order-sign", *tens_patient(n), next(week)), "tens")
        f.feedback(sign, card, "overridden", reason=reason)
    card = one(f.issue("order-sign", *tens_patient(10), next(week)), "tens")
    f.feedback(sign, card, "accepted", suggestion=card["suggestions"][0]["uuid"])
    for n in (11, 12):
        f.issue("order-sign", *tens_patient(n), ISSUE_TIMES[2])
    # patient-view: the phase plan and the cyclobenzaprine proposal, no feedback on the first call, the plan accepted on the second
    for n in range(2):
        p = Patient(45, patient_id=f"report-view-{n}")
        p.spasm(20)
        p.pain(8)
        cards = f.issue("patient-view", p, [], ISSUE_TIMES[1])
        if n == 1:
            plan = one(cards, "phase-plan")
            f.feedback(SERVICES["patient-view"], plan, "accepted", suggestion=plan["suggestions"][0]["uuid"])
    # feedback about a card this service never issued
    f.feedback(sign, {}, "accepted", suggestion="5f0c1f4e-0000-4000-8000-000000000000", card_uuid="9b6f7a34-1111-4111-8111-111111111111")
    return f.sent


@dataclass
class Expected:
    """The figures counted from what was sent."""

    topics: dict[str, Counter]
    weeks: dict[str, Counter]
    reasons: Counter

    @classmethod
    def of(cls, sent: Sent) -> "Expected":
        topics: dict[str, Counter] = defaultdict(Counter)
        weeks: dict[str, Counter] = defaultdict(Counter)
        reasons: Counter = Counter()
        for card, outcome in sent.outcome.items():
            kind = outcome or "ignored"
            for counter in (topics[sent.topic[card]], weeks[sent.week[card]]):
                counter["issued"] += 1
                counter[kind] += 1
            if outcome == "overridden":
                reasons[(sent.topic[card], *sent.reason[card])] += 1
        return cls(dict(topics), dict(weeks), reasons)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    app = make_app(folder, operator_token=TOKEN)
    sent = fill(app)
    return app, sent, Expected.of(sent), folder / "cds.sqlite"


@pytest.fixture(scope="module")
def page(filled) -> str:
    app, *_ = filled
    answer = app.test_client().get("/report", headers=AUTH)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


def code_system() -> dict:
    return next(cs for cs in shared_engine().content.of_type("CodeSystem") if cs["url"] == RECOMMENDATIONS)


def display(code: str) -> str:
    return next(c["display"] for c in code_system()["concept"] if c["code"] == code)


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def csv_of(app, name: str) -> str:
    answer = app.test_client().get(f"/report/{name}", headers=AUTH)
    assert answer.status_code == 200 and answer.mimetype == "text/csv", answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


def images(page: str) -> list[str]:
    """The SVG documents of the page's images (data: URIs)."""
    return [base64.b64decode(uri).decode("utf-8") for uri in re.findall(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)]


def svg_ids(svg: str, prefix: str) -> list[str]:
    return re.findall(rf'<g id="({re.escape(prefix)}[^"]*)"', svg)


# -- the figures ------------------------------------------------------------------------------------------------------


def test_the_database_holds_cards_of_each_kind_of_feedback(filled):
    _, sent, expected, _ = filled
    assert set(expected.topics) == {"S1", "S8", "tens", "phase-plan", "cyclobenzaprine"}
    assert len(expected.weeks) == 3 and sent.unmatched == 1
    assert {k for c in expected.topics.values() for k in c} == {"issued", "accepted", "overridden", "ignored"}
    assert {code for topic, _, code in expected.reasons if topic == "S1"} == {r["code"] for r in sent.offered["S1"]}
    assert {code for topic, _, code in expected.reasons if topic == "tens"} == {r["code"] for r in sent.offered["tens"]}
    assert ("S8", None, None) in expected.reasons


def test_per_recommendation_and_rule_the_cards_issued_accepted_overridden_and_ignored(filled):
    app, _, expected, _ = filled
    check_recommendations(app, expected)


def check_recommendations(app, expected: Expected) -> None:
    table = {row["code"]: row for row in rows(csv_of(app, "recommendations.csv"))}
    for code, counts in expected.topics.items():
        row = table[code]
        assert (int(row["issued"]), int(row["accepted"]), int(row["overridden"]), int(row["ignored"])) == \
               (counts["issued"], counts["accepted"], counts["overridden"], counts["ignored"]), code
        assert row["share_accepted"] == f"{counts['accepted'] / counts['issued']:.4f}"
        assert row["name"] == display(code)
    for code, row in table.items():  # every other recommendation and rule of the protocol is listed with no card
        if code not in expected.topics:
            assert (row["issued"], row["share_accepted"]) == ("0", "")
    assert {"S1", "S13", "red-flags", "tens", "phase-plan"} <= set(table)


def test_override_reasons_per_recommendation_and_rule(filled):
    app, sent, expected, _ = filled
    check_reasons(app, sent, expected)


def check_reasons(app, sent: Sent, expected: Expected) -> None:
    found = Counter()
    for row in rows(csv_of(app, "override-reasons.csv")):
        found[(row["code"], row["reason_system"] or None, row["reason_code"] or None)] += int(row["overridden"])
        offered = {r["code"]: r["display"] for r in sent.offered.get(row["code"], [])}
        assert row["reason"] == offered.get(row["reason_code"], "no reason given")
    assert found == expected.reasons


def test_outcomes_per_week_of_issue(filled):
    app, _, expected, _ = filled
    check_weeks(app, expected)


def check_weeks(app, expected: Expected) -> None:
    table = rows(csv_of(app, "weeks.csv"))
    assert [row["week"] for row in table] == sorted(expected.weeks) == [week_of(t) for t in ISSUE_TIMES]
    for row in table:
        counts = expected.weeks[row["week"]]
        assert date.fromisoformat(row["monday"]).weekday() == 0
        assert (int(row["issued"]), int(row["accepted"]), int(row["overridden"]), int(row["ignored"])) == \
               (counts["issued"], counts["accepted"], counts["overridden"], counts["ignored"])


@needs_postgresql
def test_the_same_figures_from_a_postgresql_database():
    with fresh_database() as url:
        app = make_app(Path(tempfile.mkdtemp(prefix="report-pg-")), database=url, operator_token=TOKEN)
        sent = fill(app)
        expected = Expected.of(sent)
        check_recommendations(app, expected)
        check_reasons(app, sent, expected)
        check_weeks(app, expected)
        page = app.test_client().get("/report", headers=AUTH).get_data(as_text=True)
        assert f"{sent.items} feedback\nitems received, of which {sent.unmatched}\n" in page and len(images(page)) == 3


def test_per_card_the_actions_title_as_authored(filled):
    app, sent, _, _ = filled
    table = {row["action_id"]: row for row in rows(csv_of(app, "cards.csv"))}
    plans = {a["id"]: (plan["title"], a["title"]) for plan in shared_engine().content.of_type("PlanDefinition") for a in plan["action"]}
    issued = Counter(sent.action[c] for c in sent.outcome)
    for action_id, count in issued.items():
        assert int(table[action_id]["issued"]) == count
        assert (table[action_id]["plan"], table[action_id]["title"]) == plans[action_id]
    assert sum(int(r["issued"]) for r in table.values()) == len(sent.outcome)


def test_the_page_shows_the_totals_and_the_same_figures(filled, page):
    _, sent, expected, _ = filled
    outcomes = Counter(o or "ignored" for o in sent.outcome.values())
    for label, value in (("cards issued", len(sent.outcome)), ("accepted", outcomes["accepted"]), ("overridden", outcomes["overridden"]),
                         ("ignored", outcomes["ignored"])):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in page
    assert f"{sent.items} feedback\nitems received, of which {sent.unmatched}\nabout cards not on record" in page
    for code, counts in expected.topics.items():
        assert (f'<td><code>{code}</code></td><td>{display(code)}</td><td class="n">{counts["issued"]}</td>'
                f'<td class="n">{counts["accepted"]}</td><td class="n">{counts["overridden"]}</td><td class="n">{counts["ignored"]}</td>') in page


def test_no_patient_data_and_no_card_or_request_ids_in_the_report(filled, page):
    app, sent, _, _ = filled
    files = [page] + [csv_of(app, name) for name in ("recommendations.csv", "override-reasons.csv", "weeks.csv", "cards.csv")]
    files += images(page)
    secrets = sent.record_text | set(sent.outcome) | {"Jane Roe"}
    for text in files:
        for secret in secrets:
            assert secret not in text, secret


# -- the charts --------------------------------------------------------------------------------------------------------


def test_each_chart_is_drawn_with_a_bar_per_outcome_and_category(filled, page):
    _, _, expected, _ = filled
    outcomes, reasons, weekly = images(page)
    assert all(svg.lstrip().startswith(("<?xml", "<svg")) and "</svg>" in svg for svg in (outcomes, reasons, weekly))
    assert sorted(re.findall(r'<g id="((?:accepted|overridden|ignored)-[^"]*)"', outcomes)) == sorted(f"{kind}-{code}" for code in expected.topics for kind in ("accepted", "overridden", "ignored"))
    drawn = sorted(svg_ids(reasons, "reason-"))
    assert drawn == sorted(re.sub(r"[^A-Za-z0-9.-]+", "-", f"reason-{code or 'none'}-{t}") for t, _, code in expected.reasons)
    assert sorted(svg_ids(weekly, "week-")) == sorted(f"week-{kind}-{w}" for w in expected.weeks for kind in ("accepted", "overridden", "ignored"))
    assert svg_ids(weekly, "acceptance-share") == ["acceptance-share"]
    for code in expected.topics:
        assert f"{code}: {display(code)}"[:40] in outcomes  # category labels are text


def test_bar_lengths_follow_the_counts(filled, page):
    """In the stacked chart each bar's width is its count on one scale: widths over counts agree across bars."""
    _, _, expected, _ = filled
    outcomes = images(page)[0]
    scales = []
    for code, counts in expected.topics.items():
        for kind in ("accepted", "overridden", "ignored"):
            body = re.search(rf'<g id="{kind}-{re.escape(code)}">\s*<path d="M ([\d.]+) [\d.]+\s*L ([\d.]+) ', outcomes)
            if counts[kind]:
                scales.append((float(body.group(2)) - float(body.group(1))) / counts[kind])
    assert scales and max(scales) - min(scales) < 0.01 * max(scales)


def test_the_page_is_drawn_again_only_when_the_figures_change(filled, tmp_path):
    app = make_app(tmp_path, operator_token=TOKEN)
    client = app.test_client()
    empty = client.get("/report", headers=AUTH).get_data(as_text=True)
    assert "No card has been issued yet" in empty and not images(empty)
    assert client.get("/report", headers=AUTH).get_data(as_text=True) == empty
    p, drafts = maoi_patient(99)
    cards_of(client, "order-sign", hook_body(app, "order-sign", p, drafts))
    after = client.get("/report", headers=AUTH).get_data(as_text=True)
    assert after != empty and len(images(after)) == 2  # no override yet: no reasons chart
    assert "<dt>cards issued</dt><dd>1</dd>" in after


# -- /report: off without the operator token, the token and nothing else with it --------------------------------------


def test_without_the_operator_token_setting_there_is_no_report(tmp_path):
    client = make_app(tmp_path).test_client()
    for path in ("/report", "/report/recommendations.csv"):
        answer = client.get(path, headers=AUTH)
        assert answer.status_code == 404 and answer.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("header", [None, f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "])
def test_a_request_without_the_operator_token_is_401(filled, header):
    app, *_ = filled
    for path in ("/report", "/report/weeks.csv"):
        answer = app.test_client().get(path, headers={"Authorization": header} if header else {})
        assert answer.status_code == 401, header
        assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="back-spasm-cds report"')
        assert answer.json["resourceType"] == "OperationOutcome" and "operator token" in answer.json["issue"][0]["diagnostics"]
        assert TOKEN not in answer.get_data(as_text=True)


def test_a_cds_client_jwt_that_opens_the_hooks_does_not_open_the_report(tmp_path):
    capture = json.loads((DATA / "sandbox-requests" / "discovery-get.json").read_text())
    issued = datetime.fromtimestamp(capture["jwt_claims"]["iat"], timezone.utc)
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "c.sqlite"), "mode": "development", "allow_unauthenticated": False,
                                                    "public_base_url": capture["jwt_claims"]["aud"].split("/cds-services")[0],
                                                    "operator_token": TOKEN})
    client = create_app(settings, engine=shared_engine(), clock=lambda: issued).test_client()
    jwt_header = {"Authorization": capture["headers"]["Authorization"]}
    assert client.get("/cds-services", headers=jwt_header).status_code == 200
    assert client.get("/report", headers=jwt_header).status_code == 401
    assert client.get("/report", headers=AUTH).status_code == 200


def test_the_page_has_a_strict_policy_and_is_not_stored(filled):
    app, *_ = filled
    answer = app.test_client().get("/report", headers=AUTH)
    policy = answer.headers["Content-Security-Policy"]
    assert answer.mimetype == "text/html" and answer.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in policy and "img-src data:" in policy and "script" not in policy and "'unsafe-inline'" not in policy
    style = re.search(r"<style>(.*?)</style>", answer.get_data(as_text=True), re.DOTALL).group(1)
    import hashlib

    assert f"'sha256-{base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()}'" in policy
    assert "<script" not in answer.get_data(as_text=True)


def test_an_unknown_report_file_is_404_naming_the_files(filled):
    app, *_ = filled
    answer = app.test_client().get("/report/patients.csv", headers=AUTH)
    assert answer.status_code == 404 and "recommendations.csv" in answer.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize("token", ["short", "x" * 23, "with a space" + "x" * 20, "tab\t" + "x" * 24])
def test_an_operator_token_that_could_be_guessed_or_mangled_stops_the_service(token, tmp_path):
    with pytest.raises(ConfigError, match="operator_token"):
        Settings.load(environ={"BACK_SPASM_CDS_OPERATOR_TOKEN": token, "BACK_SPASM_CDS_DATABASE": str(tmp_path / "x.sqlite")})


# -- the command line ----------------------------------------------------------------------------------------------------


def test_report_writes_the_page_the_csv_files_and_the_charts(filled, tmp_path, capsys):
    app, sent, _, database = filled
    out = tmp_path / "report" / "new"
    assert main(["report", "--out", str(out), "--database", str(database)]) == 0
    written = {p.name for p in out.iterdir()}
    assert written == {"index.html", "recommendations.csv", "override-reasons.csv", "weeks.csv", "cards.csv",
                       "outcomes-by-recommendation.svg", "override-reasons.svg", "outcomes-by-week.svg"}
    for name in ("recommendations.csv", "override-reasons.csv", "weeks.csv", "cards.csv"):
        assert (out / name).read_bytes().decode() == csv_of(app, name)
    html = (out / "index.html").read_text()
    assert images(html) == [(out / f"{n}.svg").read_text() for n in ("outcomes-by-recommendation", "override-reasons", "outcomes-by-week")]
    assert 'href="recommendations.csv"' in html
    outcomes = Counter(o or "ignored" for o in sent.outcome.values())
    assert (f"{len(sent.outcome)} cards issued, {outcomes['accepted']} accepted, {outcomes['overridden']} overridden, "
            f"{outcomes['ignored']} ignored") in capsys.readouterr().out


def test_report_refuses_a_missing_database_and_an_out_that_is_a_file(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "r"), "--database", str(tmp_path / "none.sqlite")]) == 2
    assert "none.sqlite does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["report", "--out", str(tmp_path / "file"), "--database", str(tmp_path / "none.sqlite")]) == 2
    assert "is a file" in capsys.readouterr().err


# -- a real browser ------------------------------------------------------------------------------------------------------

from tests.test_protocol_page import NO_CHROMIUM, DevTools, png_facts  # noqa: E402 - the one Chromium helper of the suite

SCREENSHOT = Path("/tmp/report-screenshot.png")


@NO_CHROMIUM
def test_the_report_renders_in_headless_chromium_with_its_charts(filled, tmp_path):
    from werkzeug.serving import make_server

    app, *_ = filled
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    browser = DevTools(Path(tempfile.mkdtemp(prefix="report-devtools-")))
    try:
        browser.page("Network.enable")
        browser.page("Network.setExtraHTTPHeaders", headers=AUTH)
        browser.open(f"http://127.0.0.1:{server.server_port}/report", 1280)
        assert browser.evaluate("document.images.length") == 3
        assert browser.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 400 && i.naturalHeight > 100)"), \
            "every chart loads under the page's Content-Security-Policy"
        assert browser.evaluate("getComputedStyle(document.querySelector('table')).borderCollapse") == "collapse", \
            "the inline stylesheet applies under the page's Content-Security-Policy"
        height = browser.evaluate("document.documentElement.scrollHeight")
        shot = browser.page("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
    finally:
        browser.close()
        server.shutdown()
        thread.join(10)
    path = tmp_path / "report.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    width, shot_height, ink = png_facts(path)
    assert width == 1280 and shot_height == height and ink > 0.02, f"the screenshot looks empty ({ink:.1%} of pixels drawn)"
    shutil.copy(path, SCREENSHOT)
