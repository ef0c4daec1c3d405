"""The back-spasm-cds command line: validate, bundle, package, serve and republish, which content folder each reads,
and a user's mistakes reported as one line with exit status 2 (``--debug`` for the traceback)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.request
from pathlib import Path

import pytest

import service.server
from protocol.engine.content import CONTENT_DIR, PUBLICATION_FILE, PUBLICATION_NAME, load_content
from service.cli import SUBCOMMANDS, UsageError, build_parser, main, package_version
from service.config import ENV_PREFIX

ROOT = Path(__file__).resolve().parent.parent


def copy_content(folder: Path, publication: str = "beside") -> Path:
    """A copy of the shipped content in ``folder/content``, with publication.json inside the folder or beside it."""
    content = folder / "content"
    shutil.copytree(CONTENT_DIR, content, ignore=shutil.ignore_patterns(PUBLICATION_NAME))
    shutil.copy(PUBLICATION_FILE, content / "publication.json" if publication == "inside" else folder / "publication.json")
    return content


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def one_line(err: str) -> str:
    """The single line a user's mistake prints (asserting that it is one line and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and 'File "' not in err, err
    return lines[0]


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """Run from a folder that is no checkout of the project."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# ---------------------------------------------------------------------------------- validate


def test_validate_passes_on_the_shipped_content_and_says_which_folder_it_read(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["validate"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("OK: ")
    assert f"content: {ROOT / 'protocol' / 'content' / 'back-spasm'} (the checkout at {ROOT})" in captured.err


def test_validate_warns_while_the_canonical_is_the_example_org_placeholder(capsys):
    assert main(["validate"]) == 0
    err = capsys.readouterr().err
    assert "warning: the canonical base http://example.org/fhir/back-spasm-cds is a placeholder" in err
    assert "Publishing under your own canonical" in err


def test_validate_lists_problems_and_exits_1(tmp_path, capsys):
    folder = copy_content(tmp_path)
    edit(folder / "ActivityDefinition-massage-therapy.json",
         lambda ad: ad.update(library=["http://example.org/fhir/back-spasm-cds/Library/nowhere"]))
    assert main(["--content", str(folder), "validate"]) == 1
    err = capsys.readouterr().err
    assert "ActivityDefinition-massage-therapy.json: ActivityDefinition.library[0]:" in err
    assert f"1 problem(s) in {folder}:" in err


def test_an_activity_definition_kind_that_is_no_resource_type_is_a_problem_not_a_traceback(tmp_path, capsys):
    """validate lists it (exit 1); apply cannot compile such content and says so in one line (exit 2)."""
    folder = copy_content(tmp_path)
    edit(folder / "ActivityDefinition-massage-therapy.json", lambda ad: ad.update(kind="NotAType"))
    assert main(["--content", str(folder), "validate"]) == 1
    err = capsys.readouterr().err
    assert "ActivityDefinition-massage-therapy.json: ActivityDefinition.kind: 'NotAType'" in err
    assert "Traceback" not in err
    data = tmp_path / "patient.json"
    data.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p", "birthDate": "1980-01-01"}}]}))
    assert main(["apply", "--content", str(folder), "--data", str(data)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"the content in {folder} cannot be compiled" in line and "NotAType" in line and "validate" in line


def test_a_missing_content_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--content", str(tmp_path / "nowhere"), "validate"]) == 2
    assert "content folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- which content folder


def test_publication_json_is_found_inside_the_content_folder(tmp_path, capsys):
    folder = copy_content(tmp_path, publication="inside")
    assert main(["validate", "--content", str(folder)]) == 0
    assert f"content: {folder} (--content)" in capsys.readouterr().err


def test_publication_json_inside_the_folder_wins_over_one_beside_it(tmp_path):
    folder = copy_content(tmp_path, publication="inside")
    beside = json.loads(PUBLICATION_FILE.read_text())
    beside["version"] = "9.9.9"
    (tmp_path / "publication.json").write_text(json.dumps(beside))
    assert load_content(folder).publication["version"] == json.loads(PUBLICATION_FILE.read_text())["version"]


def test_a_content_folder_without_publication_json_names_both_places(tmp_path, capsys):
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder, ignore=shutil.ignore_patterns(PUBLICATION_NAME))
    assert main(["validate", "--content", str(folder)]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert f"{folder / 'publication.json'} or {tmp_path / 'publication.json'}" in line


def make_checkout(root: Path) -> Path:
    """A checkout of the project: its pyproject.toml and protocol/content/back-spasm with its publication.json."""
    (root / "protocol").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(CONTENT_DIR, root / "protocol" / "content" / "back-spasm")
    return root / "protocol" / "content" / "back-spasm"


def test_inside_a_checkout_the_commands_read_its_content(tmp_path, monkeypatch, capsys):
    """An author's edit in the checkout is what validate checks, from any folder below the checkout's root."""
    content = make_checkout(tmp_path / "checkout")
    edit(content / "ActivityDefinition-massage-therapy.json", lambda ad: ad.update(kind="NotAType"))
    (tmp_path / "checkout" / "docs").mkdir()
    monkeypatch.chdir(tmp_path / "checkout" / "docs")
    assert main(["validate"]) == 1
    err = capsys.readouterr().err
    assert f"content: {content} (the checkout at {tmp_path / 'checkout'})" in err
    assert "'NotAType'" in err
    out = tmp_path / "bundle.json"
    assert main(["bundle", "--out", str(out)]) == 0
    assert f"content: {content} (the checkout at" in capsys.readouterr().err
    kinds = {e["resource"]["id"]: e["resource"].get("kind") for e in json.loads(out.read_text())["entry"]}
    assert kinds["massage-therapy"] == "NotAType"


def test_content_wins_over_the_checkout(tmp_path, monkeypatch, capsys):
    make_checkout(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path / "checkout")
    other = copy_content(tmp_path / "other")
    assert main(["validate", "--content", str(other)]) == 0
    assert f"content: {other} (--content)" in capsys.readouterr().err


def test_outside_a_checkout_the_installed_copy_is_read(outside, capsys):
    assert main(["validate"]) == 0
    assert f"content: {CONTENT_DIR} (the copy installed with the package)" in capsys.readouterr().err


def test_a_folder_with_another_projects_pyproject_is_no_checkout(tmp_path, monkeypatch, capsys):
    root = tmp_path / "other-project"
    make_checkout(root)
    (root / "pyproject.toml").write_text('[project]\nname = "something-else"\nversion = "0.1"\n')
    monkeypatch.chdir(root)
    assert main(["validate"]) == 0
    assert "(the copy installed with the package)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- bundle and package


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


def test_bundle_into_a_folder_that_does_not_exist_is_one_line(tmp_path, capsys):
    target = tmp_path / "nonexistent" / "dir" / "x.json"
    assert main(["bundle", "--out", str(target)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"back-spasm-cds bundle: error: --out {target}: the folder {target.parent} does not exist"
    assert not target.parent.exists()


def test_bundle_onto_a_folder_is_one_line(tmp_path, capsys):
    assert main(["bundle", "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_line(capsys.readouterr().err)


def test_package_writes_the_tgz_into_the_folder(tmp_path, capsys):
    assert main(["package", "--out", str(tmp_path / "dist")]) == 0
    path = Path(capsys.readouterr().out.split()[-1])
    assert path.parent == tmp_path / "dist" and path.name.endswith(".tgz")
    with tarfile.open(path) as archive:
        assert "package/package.json" in archive.getnames()


def test_package_onto_an_existing_file_is_one_line(tmp_path, capsys):
    existing = tmp_path / "x.tgz"
    existing.write_bytes(b"keep me")
    assert main(["package", "--out", str(existing)]) == 2
    assert "is a file; give a folder" in one_line(capsys.readouterr().err)
    assert existing.read_bytes() == b"keep me"


# ---------------------------------------------------------------------------------- mistakes, --debug, --help, --version


@pytest.mark.parametrize("args, expected", [
    (["bundle", "--out", "/nonexistent/dir/x.json"], "--out /nonexistent/dir/x.json: the folder /nonexistent/dir does not exist"),
    (["serve", "--port", "99999"], "argument --port: 99999 is not a port number (1 to 65535)"),
    (["push", "--fhir-server", "not-a-url"], "argument --fhir-server: 'not-a-url' is not an http(s) URL"),
    (["push"], "--fhir-server is required (or --dry-run"),
    (["apply", "--data", "/nonexistent/patient.json"], "/nonexistent/patient.json: cannot be read"),
    (["apply", "--data", "x.json", "--at", "yesterday"], "--at 'yesterday': not an ISO 8601 date"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_a_users_mistake_is_one_line_on_stderr_and_exit_2(args, expected, outside, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert expected in one_line(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize("args", [
    ["bundle", "--out", "/nonexistent/dir/x.json"],
    ["serve", "--port", "99999"],
    ["push", "--fhir-server", "not-a-url"],
    ["package", "--out", "{existing}"],
])
def test_the_installed_command_prints_no_traceback_for_a_mistake(args, tmp_path):
    """As a user runs it: a new process, so nothing printed at exit (gevent, gunicorn) escapes the check."""
    existing = tmp_path / "existing.tgz"
    existing.write_text("x")
    argv = [a.format(existing=existing) for a in args]
    proc = subprocess.run([sys.executable, "-m", "service.cli", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr).startswith(f"back-spasm-cds {args[0]}: error: ")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        main(["bundle", "--debug", "--out", str(tmp_path / "nowhere" / "x.json")])
    with pytest.raises(UsageError):
        main(["--debug", "bundle", "--out", str(tmp_path / "nowhere" / "x.json")])


def test_an_option_after_the_sub_command_does_not_reset_one_given_before_it(tmp_path, capsys):
    folder = copy_content(tmp_path)
    assert main(["--content", str(folder), "validate"]) == 0
    assert f"content: {folder} (--content)" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"back-spasm-cds {package_version()}"
    assert package_version()[0].isdigit()


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_sub_command_says_what_it_does_and_lists_its_options(name, capsys):
    assert main([name, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    description = " ".join(SUBCOMMANDS[name][1].split())
    assert description[:60] in text
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[name]
    for action in sub._actions:
        for option in action.option_strings:
            assert option in text, f"{name} --help does not list {option}"
        if action.option_strings:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings} has no help"


def test_the_top_level_help_lists_every_sub_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (summary, _) in SUBCOMMANDS.items():
        assert name in out and summary[:30] in " ".join(out.split())


# ---------------------------------------------------------------------------------- serve


@pytest.fixture
def not_started(monkeypatch):
    """serve's settings and checks, with gunicorn replaced by a recorder."""
    runs = []
    monkeypatch.setattr(service.server, "run", lambda host, port, settings: runs.append((host, port, settings)))
    for name in ("CONFIG", "MODE", "TRUSTED_CLIENTS", "DATABASE", "PUBLIC_BASE_URL", "TIMEZONE", "CONTENT_DIR"):
        monkeypatch.delenv(ENV_PREFIX + name, raising=False)
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_on_a_port_in_use_says_so_and_starts_nothing(not_started, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"back-spasm-cds serve: error: port {port} is in use: pick another with --port"
    assert not_started == []


def test_serve_in_a_checkout_serves_the_checkouts_content(not_started, tmp_path, monkeypatch, capsys):
    content = make_checkout(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.setenv(ENV_PREFIX + "DATABASE", str(tmp_path / "cds.sqlite"))
    assert main(["serve", "--port", str(free_port())]) == 0
    assert not_started[-1][2].content_dir == str(content)
    assert f"content: {content} (from the checkout at {tmp_path / 'checkout'})" in capsys.readouterr().err


def test_serve_in_the_project_folder_says_it_serves_the_checkout(not_started, tmp_path, monkeypatch, capsys):
    """Also where the checkout is the installed copy (an editable install)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(ENV_PREFIX + "DATABASE", str(tmp_path / "cds.sqlite"))
    assert main(["serve", "--port", str(free_port())]) == 0
    assert f"content: {ROOT / 'protocol' / 'content' / 'back-spasm'} (from the checkout at {ROOT})" in capsys.readouterr().err


def test_serve_content_option_and_environment_win_over_the_checkout(not_started, tmp_path, monkeypatch, capsys):
    make_checkout(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.setenv(ENV_PREFIX + "DATABASE", str(tmp_path / "cds.sqlite"))
    other = copy_content(tmp_path / "other")
    monkeypatch.setenv(ENV_PREFIX + "CONTENT_DIR", str(other))
    assert main(["serve", "--port", str(free_port())]) == 0
    assert not_started[-1][2].content_dir == str(other)
    assert f"content: {other} (from the environment ({ENV_PREFIX}CONTENT_DIR))" in capsys.readouterr().err
    third = copy_content(tmp_path / "third")
    assert main(["serve", "--content", str(third), "--port", str(free_port())]) == 0
    assert not_started[-1][2].content_dir == str(third)


def test_serve_refuses_unreadable_content_before_starting(not_started, tmp_path, capsys):
    assert main(["serve", "--content", str(tmp_path / "nowhere"), "--port", str(free_port())]) == 2
    assert "content folder not found" in capsys.readouterr().err
    assert not_started == []


def _read_lines(stream, lines: list[str], seen: threading.Event, marker: str) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if marker in line:
            seen.set()


def test_serve_announces_its_addresses_once_the_port_is_bound(tmp_path):
    """The real command under gunicorn: the hooks, page and health addresses come only when the port answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update({ENV_PREFIX + "DATABASE": str(tmp_path / "cds.sqlite"), ENV_PREFIX + "WORKERS": "1", ENV_PREFIX + "LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT)})
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    announced = threading.Event()
    reader = threading.Thread(target=_read_lines, args=(process.stderr, lines, announced, "health:"), daemon=True)
    reader.start()
    try:
        assert announced.wait(90), "\n".join(lines)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        text = "\n".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert text.index("starting the CDS Hooks service (development mode)") < text.index(f"serving on {base}")
        for address in (f"{base}/cds-services", f"{base}/protocol", f"{base}/healthz"):
            assert address in text
        assert text.count(f"serving on {base}") == 1
        with urllib.request.urlopen(f"{base}/healthz", timeout=30) as answer:
            assert answer.status == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# ---------------------------------------------------------------------------------- publishing under one's own canonical

NEW_BASE = "https://knowledge.stmarys-health.org/fhir/back-spasm"


def test_republish_moves_every_artifact_to_the_new_canonical_and_validate_agrees(tmp_path, capsys):
    folder = copy_content(tmp_path, publication="inside")
    edit(folder / "publication.json", lambda pub: pub.update(
        canonical=NEW_BASE, version="1.1.0", publisher="St Mary's Health", date="2027-02-01", packageId="org.stmarys-health.back-spasm",
        contact=[{"name": "Clinical knowledge team", "telecom": [{"system": "email", "value": "cds@stmarys-health.org"}]}]))
    assert main(["validate", "--content", str(folder)]) == 1
    assert "expected https://knowledge.stmarys-health.org/fhir/back-spasm/" in capsys.readouterr().err

    assert main(["republish", "--content", str(folder)]) == 0
    out = capsys.readouterr().out
    content = load_content()
    assert f"rewrote {len(content.resources)} of {len(content.resources)} artifacts" in out
    texts = [p.read_text() for p in folder.glob("*.json")]
    assert not any("example.org/fhir/back-spasm-cds" in t for t in texts)
    assert main(["validate", "--content", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "placeholder" not in captured.err
    assert f"OK: {len(content.resources)} artifacts in {folder} (version 1.1.0, {NEW_BASE})" in captured.out
    republished = load_content(folder)
    for resource in republished.resources:
        assert resource["url"] == f"{NEW_BASE}/{resource['resourceType']}/{resource['id']}"
        assert resource["version"] == "1.1.0" and resource["publisher"] == "St Mary's Health" and resource["date"] == "2027-02-01"
    assert main(["republish", "--content", str(folder)]) == 0
    assert "rewrote 0 of" in capsys.readouterr().out


def test_republished_valuesets_are_what_the_valueset_generator_builds(tmp_path, capsys):
    """The rewrite and scripts/make_valuesets.py agree, so `make_valuesets.py --check` stays quiet afterwards."""
    import importlib.util

    folder = copy_content(tmp_path, publication="inside")
    edit(folder / "publication.json", lambda pub: pub.update(canonical=NEW_BASE, version="2.0.0", date="2027-02-01"))
    assert main(["republish", "--content", str(folder)]) == 0
    spec = importlib.util.spec_from_file_location("make_valuesets", ROOT / "scripts" / "make_valuesets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    built = script.build_valuesets(ROOT / "tests" / "data" / "terminology", json.loads((folder / "publication.json").read_text()))
    assert script.drift(built, folder) == []


def test_the_republished_protocol_still_advises(tmp_path, capsys):
    from tests.patients import Patient

    folder = copy_content(tmp_path, publication="inside")
    edit(folder / "publication.json", lambda pub: pub.update(canonical=NEW_BASE))
    assert main(["republish", "--content", str(folder)]) == 0
    patient = Patient(45)
    patient.spasm(20)
    data = tmp_path / "patient.json"
    data.write_text(json.dumps(patient.bundle("collection")))
    capsys.readouterr()
    assert main(["apply", "--content", str(folder), "--data", str(data), "--at", "2026-11-25T10:00:00Z"]) == 0
    careplan = json.loads(capsys.readouterr().out)
    assert careplan["instantiatesCanonical"][0].startswith(f"{NEW_BASE}/PlanDefinition/")
    group = next(r for r in careplan["contained"] if r["resourceType"] == "RequestGroup")
    assert group["instantiatesCanonical"][0].startswith(f"{NEW_BASE}/PlanDefinition/")
    assert any("day 1" in action["title"] for action in group["action"])


def test_republish_refuses_artifacts_under_different_bases(tmp_path, capsys):
    folder = copy_content(tmp_path, publication="inside")
    edit(folder / "Library-back-spasm-logic.json", lambda lib: lib.update(url="https://elsewhere.org/Library/back-spasm-logic"))
    assert main(["republish", "--content", str(folder)]) == 2
    assert "must share one canonical base" in one_line(capsys.readouterr().err.split("\n", 1)[1])


# ---------------------------------------------------------------------------------- push in batches

TYPE_RANK = ["CodeSystem", "ValueSet", "StructureDefinition", "Library", "ActivityDefinition", "PlanDefinition"]


def transaction_server(httpserver, refuse_batch: int | None = None):
    """A FHIR server that stores transactions (answering 200 per entry), refusing the n-th one with a 422."""
    from werkzeug.wrappers import Response

    received: list[dict] = []

    def handler(request):
        bundle = request.get_json(force=True)
        received.append(bundle)
        if len(received) == refuse_batch:
            outcome = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "processing", "diagnostics": "Transaction has more than 10 entries with a ValueSet compose",
                 "expression": ["Bundle.entry[3].resource"]}]}
            return Response(json.dumps(outcome), status=422, content_type="application/fhir+json")
        answer = {"resourceType": "Bundle", "type": "transaction-response",
                  "entry": [{"response": {"status": "200 OK", "location": f"{e['request']['url']}/_history/1"}} for e in bundle["entry"]]}
        return Response(json.dumps(answer), content_type="application/fhir+json")

    httpserver.expect_request("/fhir", method="POST").respond_with_handler(handler)
    return received


def test_push_sends_transactions_of_at_most_the_batch_size_in_dependency_order(httpserver, capsys):
    received = transaction_server(httpserver)
    content = load_content()
    assert main(["push", "--fhir-server", httpserver.url_for("/fhir"), "--batch-size", "20"]) == 0
    out = capsys.readouterr().out
    assert [len(b["entry"]) for b in received] == [20, 20, len(content.resources) - 40]
    assert all(b["type"] == "transaction" for b in received)
    sent = [e["resource"] for b in received for e in b["entry"]]
    assert sorted((r["resourceType"], r["id"]) for r in sent) == sorted((r["resourceType"], r["id"]) for r in content.resources)
    ranks = [TYPE_RANK.index(r["resourceType"]) for r in sent]
    assert ranks == sorted(ranks), "CodeSystem, ValueSet, StructureDefinition, Library, ActivityDefinition, PlanDefinition"
    position = {r["url"]: i for i, r in enumerate(sent)}
    unions = [r for r in sent if any("valueSet" in inc for inc in r.get("compose", {}).get("include", []))]
    assert unions
    for union in unions:
        for include in union["compose"]["include"]:
            for part in include.get("valueSet", []):
                assert position[part] < position[union["url"]], f"{union['id']} is sent before {part}"
    assert "batch 1 of 3: stored 20 entries (CodeSystem 2, ValueSet 18)" in out
    assert "batch 3 of 3: stored" in out
    assert out.count("ok  ") == len(content.resources)
    assert f"{len(content.resources)} of {len(content.resources)} entries accepted" in out


def test_a_refused_batch_prints_the_servers_outcome_which_batch_failed_and_what_was_stored(httpserver, capsys):
    received = transaction_server(httpserver, refuse_batch=2)
    assert main(["push", "--fhir-server", httpserver.url_for("/fhir"), "--batch-size", "20"]) == 1
    captured = capsys.readouterr()
    assert len(received) == 2, "nothing is sent after the refused batch"
    assert "batch 1 of 3: stored 20 entries" in captured.out
    err = captured.err
    assert "error: batch 2 of 3 was not stored: " in err and "HTTP 422" in err
    assert ("OperationOutcome: error processing Transaction has more than 10 entries with a ValueSet compose "
            "(at Bundle.entry[3].resource)") in err
    assert "stored before the failure: batch 1 of 3 (20 entries: CodeSystem 2, ValueSet 18)" in err
    assert "20 of 50 entries stored; not sent: batch 3 of 3" in err


def test_a_first_batch_refused_stores_nothing(httpserver, capsys):
    transaction_server(httpserver, refuse_batch=1)
    assert main(["push", "--fhir-server", httpserver.url_for("/fhir"), "--batch-size", "30"]) == 1
    err = capsys.readouterr().err
    assert "batch 1 of 2 was not stored" in err and "stored before the failure: nothing" in err and "not sent: batch 2 of 2" in err


def test_push_dry_run_prints_the_plan_and_sends_nothing(httpserver, capsys):
    received = transaction_server(httpserver)
    assert main(["push", "--dry-run", "--fhir-server", httpserver.url_for("/fhir"), "--batch-size", "20"]) == 0
    out = capsys.readouterr().out
    assert received == [] and len(httpserver.log) == 0
    assert "50 artifacts for http://localhost" in out and "in 3 transaction(s) of at most 20 entries" in out
    assert "batch 1 of 3: 20 entries (CodeSystem 2, ValueSet 18)" in out
    assert "  PUT CodeSystem/back-spasm-recommendations" in out
    assert out.index("PUT ValueSet/") < out.index("PUT Library/back-spasm-logic") < out.index("PUT PlanDefinition/")
    assert "dry run: nothing was sent" in out
    assert main(["push", "--dry-run"]) == 0


def test_the_default_batch_is_50_entries(tmp_path, httpserver, capsys):
    """The shipped 50 artifacts go as one transaction; one artifact more makes a second."""
    folder = copy_content(tmp_path)
    extra = json.loads((folder / "ValueSet-tens.json").read_text())
    extra.update(id="tens-copy", url=extra["url"] + "-copy", name="TensCopy")
    (folder / "ValueSet-tens-copy.json").write_text(json.dumps(extra))
    received = transaction_server(httpserver)
    assert main(["push", "--fhir-server", httpserver.url_for("/fhir")]) == 0
    assert main(["push", "--content", str(folder), "--fhir-server", httpserver.url_for("/fhir")]) == 0
    assert [len(b["entry"]) for b in received] == [50, 50, 1]


def test_a_batch_size_below_1_is_a_mistake(capsys):
    assert main(["push", "--dry-run", "--batch-size", "0"]) == 2
    assert "argument --batch-size: 0: a transaction holds at least 1 entry" in one_line(capsys.readouterr().err)


def test_bundle_conditional_creates_each_artifact_only_if_the_server_has_none(tmp_path, capsys):
    from service.cli import main

    out = tmp_path / "conditional.json"
    assert main(["bundle", "--conditional", "--out", str(out)]) == 0
    bundle = json.loads(out.read_text())
    assert bundle["type"] == "transaction" and bundle["entry"]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["ifNoneExist"] == f"url={resource['url']}&version={resource['version']}"
    assert main(["bundle", "--conditional", "--type", "collection"]) == 2
    assert "--conditional" in capsys.readouterr().err
