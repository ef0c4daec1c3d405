"""The examples/ folder: every request gives the cards that the README's "See it advise" section states, as checked
in and as written afresh for today; the files are what examples/make_examples.py writes; the README's curl and apply
commands name real files and print what it says."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path

import pytest

from service import create_app
from service.cli import main
from service.config import Settings
from tests.service_helpers import SERVICES, r4b_problems, shared_engine, templates

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
PRIORITY_INDICATOR = {"routine": "info", "urgent": "warning", "asap": "critical", "stat": "critical"}
#: Examples whose outcome does not depend on the day they are sent (no phase, no "hours since onset" in them).
TIMELESS = ["order-sign-maoi.json", "order-sign-30-days.json", "order-sign-older-adult.json", "patient-view-out-of-scope.json"]


def _generator():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _generator()


def section(title: str) -> str:
    """The text of one ``## title`` section of the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def stated_outcomes() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """From the README's table of examples: file -> (hook or ``apply``, [(indicator, card summary)])."""
    rows = {}
    for line in section("See it advise").splitlines():
        match = re.match(r"\| `examples/([\w.-]+\.json)` \| (?:`([\w-]+)`|(\w+)) \| [^|]+ \| (.+) \|$", line)
        if not match:
            continue
        name, hook, other, cards = match.groups()
        stated = [] if cards.strip() == "no cards" else [
            (m.group(1), m.group(2).strip()) for m in (re.match(r"\*\*(\w+)\*\* (.+)", c.strip()) for c in cards.split("<br>")) if m]
        rows[name] = (hook or other, stated)
    return rows


def examples_on_disk() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.json"))


def hook_examples() -> list[str]:
    return [name for name in examples_on_disk() if "hook" in json.loads((EXAMPLES / name).read_text())]


def load(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def written_at(body: dict) -> datetime:
    """When the generator wrote a request: its Patient's meta.lastUpdated."""
    return datetime.fromisoformat(body["prefetch"]["patient"]["meta"]["lastUpdated"].replace("Z", "+00:00"))


def app_with_clock(tmp_path: Path, clock=None):
    """The service in development mode (as `serve` runs on loopback), on the real clock unless one is given."""
    settings = Settings.load(environ={}, overrides={"database": str(tmp_path / "cds.sqlite")})
    return create_app(settings, engine=shared_engine(), clock=(lambda: clock) if clock else None)


def cards_for(app, body: dict) -> list[tuple[str, str]]:
    answer = app.test_client().post(f"/cds-services/{SERVICES[body['hook']]}", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:1000]
    return sorted((c["indicator"], c["summary"]) for c in answer.get_json()["cards"])


# ---------------------------------------------------------------------------------- the README and the folder agree


def test_the_readme_states_an_outcome_for_every_example_and_names_no_other():
    rows = stated_outcomes()
    assert sorted(rows) == examples_on_disk()
    for name in hook_examples():
        assert rows[name][0] == load(name)["hook"]
    assert rows["apply-patient-bundle.json"][0] == "apply"


def test_the_examples_cover_what_a_new_user_wants_to_see():
    """An in-scope patient early on with a proposal, an MAO inhibitor with a cyclobenzaprine draft, a 30-day course,
    an older adult, a patient out of scope, and a Bundle for apply."""
    rows = stated_outcomes()
    assert any("proposal" in s.lower() or "may be added" in s for _, s in rows["patient-view-early-course.json"][1])
    assert [i for i, _ in rows["order-sign-maoi.json"][1]] == ["critical"]
    assert any("21 days" in s for _, s in rows["order-sign-30-days.json"][1])
    assert any("65" in s for _, s in rows["order-sign-older-adult.json"][1])
    assert rows["patient-view-out-of-scope.json"][1] == []


# ---------------------------------------------------------------------------------- the requests give the stated cards


@pytest.mark.parametrize("name", ["patient-view-early-course.json", *TIMELESS])
def test_each_checked_in_request_gives_the_stated_cards_at_the_moment_it_was_written(name, tmp_path):
    body = load(name)
    assert cards_for(app_with_clock(tmp_path, written_at(body)), body) == sorted(stated_outcomes()[name][1])


@pytest.mark.parametrize("name", TIMELESS)
def test_the_order_sign_and_out_of_scope_requests_give_the_stated_cards_whenever_they_are_sent(name, tmp_path):
    """These do not age: sent as checked in, on the service's real clock, today."""
    body = load(name)
    assert cards_for(app_with_clock(tmp_path), body) == sorted(stated_outcomes()[name][1])


@pytest.mark.parametrize("name", ["patient-view-early-course.json", *TIMELESS])
def test_requests_written_afresh_give_the_stated_cards_today(name, tmp_path):
    """What a user gets after `python examples/make_examples.py`: the same cards, on the real clock."""
    body = generator.build(datetime.now(timezone.utc).replace(microsecond=0))[name]
    assert cards_for(app_with_clock(tmp_path), body) == sorted(stated_outcomes()[name][1])


def test_the_apply_example_prints_the_stated_cards(capsys):
    stated = stated_outcomes()["apply-patient-bundle.json"][1]
    at = generator.APPLY_AT.isoformat().replace("+00:00", "Z")
    assert main(["apply", "--data", str(EXAMPLES / "apply-patient-bundle.json"), "--at", at]) == 0
    captured = capsys.readouterr()
    careplan = json.loads(captured.out)
    group = next(r for r in careplan["contained"] if r["resourceType"] == "RequestGroup")
    printed = sorted((PRIORITY_INDICATOR[a["priority"]], a["title"]) for a in group["action"])
    assert printed == sorted(stated)
    for indicator, summary in stated:
        if indicator != "info":
            assert f"{indicator}: {summary}" in captured.err


# ---------------------------------------------------------------------------------- the files themselves


def test_the_checked_in_files_are_what_the_generator_writes():
    for name in hook_examples():
        built = generator.build(written_at(load(name)))
        assert (EXAMPLES / name).read_text(encoding="utf-8") == generator.render(built[name]), f"{name}: run examples/make_examples.py"
    built = generator.build(datetime.now(timezone.utc))
    assert (EXAMPLES / "apply-patient-bundle.json").read_text(encoding="utf-8") == generator.render(built["apply-patient-bundle.json"])


def test_the_hook_requests_of_one_generation_share_their_moment():
    moments = {written_at(load(name)) for name in hook_examples()}
    assert len(moments) == 1, "regenerate every example at once: python examples/make_examples.py"


def test_every_request_fills_every_prefetch_key_the_service_advertises(tmp_path):
    app = app_with_clock(tmp_path)
    for name in hook_examples():
        body = load(name)
        assert set(body["prefetch"]) == set(templates(app, SERVICES[body["hook"]])), name
        assert "fhirServer" not in body, "complete prefetch: the examples need no FHIR server"


def test_every_resource_of_the_examples_is_valid_fhir():
    for name in examples_on_disk():
        data = load(name)
        if "hook" in data:
            resources = [data["prefetch"]["patient"]]
            resources += [e["resource"] for key, value in data["prefetch"].items() if key != "patient" for e in value["entry"]]
            resources += [e["resource"] for e in data["context"].get("draftOrders", {}).get("entry", [])]
        else:
            resources = [e["resource"] for e in data["entry"]]
        for resource in resources:
            assert r4b_problems(resource) == [], (name, resource["id"])


# ---------------------------------------------------------------------------------- the README's two commands


def readme_commands() -> list[list[str]]:
    """The shell commands of the section's code blocks, split as a shell would (line continuations joined)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section("See it advise"), re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(shlex.split(command, comments=True))
    return commands


def test_the_readme_curl_posts_an_example_to_its_service():
    curls = [c for c in readme_commands() if c[0] == "curl"]
    assert len(curls) == 1
    curl = curls[0]
    data = curl[curl.index("--data") + 1]
    assert data.startswith("@examples/")
    body = load(data.removeprefix("@examples/"))
    url = next(a for a in curl if a.startswith("http://"))
    assert url == f"http://127.0.0.1:8080/cds-services/{SERVICES[body['hook']]}"
    assert "Content-Type: application/json" in curl
    summaries = [s for _, s in stated_outcomes()[data.removeprefix("@examples/")][1]]
    assert all(s in section("See it advise") for s in summaries)


def test_the_readme_apply_command_sets_the_clock_the_example_was_written_for():
    applies = [c for c in readme_commands() if "apply" in c]
    assert len(applies) == 1
    command = applies[0]
    assert command[command.index("--data") + 1] == "examples/apply-patient-bundle.json"
    assert command[command.index("--at") + 1] == generator.APPLY_AT.isoformat().replace("+00:00", "Z")
