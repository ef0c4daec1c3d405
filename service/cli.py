"""The ``back-spasm-cds`` command: check the protocol content, export it, apply it to a patient, serve it.

A mistake in what was asked (a file that cannot be read, an output folder that does not exist, a port out of range,
a server address that is not a URL, content that cannot be compiled) is reported as one line on standard error with
exit status 2; ``--debug`` shows the traceback instead. Run inside a checkout of the project, the commands read the
checkout's ``protocol/content``; elsewhere, the copy installed with the package; ``--content`` wins over both.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol.engine.content import (
    CONTENT_DIR,
    Content,
    ContentError,
    ContentSource,
    load_content,
    load_contents,
    locate_content,
    protocol_folders,
)

Command = Callable[[argparse.Namespace], int]

PROG = "back-spasm-cds"


class UsageError(Exception):
    """A mistake in what the user asked for: reported as one line on standard error, exit status 2."""


def package_version() -> str:
    """The installed distribution's version (``unknown`` when run from a copy that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PROG)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------- content and files


def content_source(args: argparse.Namespace) -> ContentSource:
    """The content folder the command reads (--content, the checkout it runs in, or the installed copy)."""
    try:
        return locate_content(args.content)
    except OSError:  # the current folder was deleted under us: no checkout to find
        return ContentSource(CONTENT_DIR, "the copy installed with the package")


def read_content(args: argparse.Namespace, announce: bool = True) -> Content:
    """Load the content the command reads, saying on standard error which folder that is."""
    source = content_source(args)
    if announce:
        print(source.describe(), file=sys.stderr)
    return load_content(source.directory)


def output_file(path: Path | None) -> Path | None:
    """--out naming a file: its folder must exist and it must not be a folder itself (checked before any work)."""
    if path is None:
        return None
    if path.is_dir():
        raise UsageError(f"--out {path}: is a folder; give the name of the file to write")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: the folder {path.parent} does not exist")
    return path


def write_json(data: Any, out: Path | None) -> None:
    """JSON to the file, or to standard output without --out."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot be written ({exc.strerror or exc})") from exc


# ---------------------------------------------------------------------------------- validate


#: Hosts reserved for documentation (RFC 2606): a canonical URL on one of them is a placeholder.
PLACEHOLDER_HOSTS = ("example.org", "example.com", "example.net")


def placeholder_warning(content: Content) -> str | None:
    """A warning while the canonical base is a placeholder: artifacts published under it cannot be told from
    anyone else's copy of this project."""
    canonical = str(content.publication.get("canonical", ""))
    host = (urlsplit(canonical).hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in PLACEHOLDER_HOSTS):
        return (f"warning: the canonical base {canonical} is a placeholder ({host}); publish under your own before "
                "sharing the artifacts (README: Publishing under your own canonical)")
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every artifact of every protocol folder (or of the --content folder); print the problems and exit 1 if
    there are any."""
    source = content_source(args)
    folders = [source.directory] if args.content else protocol_folders(source.directory.parent) or [source.directory]
    print(source.describe(), file=sys.stderr)
    return max(_validate_folder(folder) for folder in folders)


def _validate_folder(folder: Path) -> int:
    """Validate one protocol folder: 0 when it has no problem, 1 otherwise."""
    from protocol.engine.validation import validate_content

    content = load_content(folder)
    problems = validate_content(content)
    warning = placeholder_warning(content)
    if warning:
        print(warning, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {content.directory}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"OK: {len(content.resources)} artifacts in {content.directory} "
          f"(version {content.publication['version']}, {content.publication['canonical']})")
    return 0


# ---------------------------------------------------------------------------------- bundle, package


def cmd_bundle(args: argparse.Namespace) -> int:
    """Write the artifacts as a transaction or collection Bundle."""
    from protocol.engine.bundle import artifact_bundle

    out = output_file(args.out)
    content = read_content(args)
    if args.conditional and args.type != "transaction":
        raise UsageError("--conditional makes a transaction: it cannot be used with --type collection")
    write_json(artifact_bundle(content, args.type, conditional=args.conditional), out)
    if out:
        print(f"wrote {args.type} Bundle of {len(content.resources)} artifacts to {out}", file=sys.stderr)
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    """Write the FHIR NPM package (.tgz) into the --out folder."""
    from protocol.engine.package import build_package

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder (the package is written into it as <packageId>-<version>.tgz)")
    content = read_content(args)
    try:
        path = build_package(content, args.out)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: the package cannot be written there ({exc.strerror or exc})") from exc
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------- apply

#: The service's ``timezone`` setting as an environment variable; ``apply`` reads it too when --timezone is not given.
TIMEZONE_VARIABLE = "BACK_SPASM_CDS_TIMEZONE"


def _clock(text: str | None, zone: tzinfo = timezone.utc) -> datetime:
    """--at: an ISO date/time with offset (without one, a date or a time is local time in the zone); default now."""
    if text is None:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--at {text!r}: not an ISO 8601 date or date-time (for example 2026-11-25T10:00:00Z)") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def compiled(content: Content, zone: tzinfo) -> Any:
    """The engine for the content; content that cannot be compiled is the author's mistake, named in one line."""
    from protocol.engine.apply import Engine

    try:
        return Engine(content, timezone=zone)
    except Exception as exc:  # noqa: BLE001 - whatever the content made the compiler raise, it is reported as such
        raise UsageError(f"the content in {content.directory} cannot be compiled: {exc} "
                         f"(`{PROG} validate` lists its problems)") from exc


def cmd_apply(args: argparse.Namespace) -> int:
    """Apply the protocol to a Bundle of patient data or to a CDS Hooks request body; print the result.

    The result is the only thing on standard output; every warning goes to standard error. Exit 2 for a request
    that names a draft order of another patient (a request error, as the service's 400), 1 for any other call
    that cannot be made.
    """
    from protocol.engine.apply import ApplyError
    from protocol.engine.content import read_json
    from protocol.engine.fhirpath import time_zone
    from protocol.engine.output import bundle_r5, careplan_r4
    from service.cds_hooks.calls import DraftForAnotherPatient, calls_for_bundle, calls_for_hook, is_hook_request, run_calls

    out = output_file(args.out)
    name = args.timezone if args.timezone is not None else os.environ.get(TIMEZONE_VARIABLE, "UTC")
    try:
        zone = time_zone(name)
    except ValueError as exc:
        origin = "--timezone" if args.timezone is not None else TIMEZONE_VARIABLE
        raise UsageError(f"{origin}: {exc}") from exc
    moment = _clock(args.at, zone)
    data = read_json(args.data)
    engine = compiled(read_content(args, announce=False), zone)
    try:
        calls = calls_for_hook(engine, data) if is_hook_request(data) else calls_for_bundle(engine, data, args.plan)
        if args.plan:
            calls = [c for c in calls if c.plan == args.plan or engine.plan(args.plan).resource["id"] == c.plan]
        results = run_calls(engine, calls, moment)
    except DraftForAnotherPatient as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ApplyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write = bundle_r5 if args.r5 else careplan_r4
    outputs = [write(result) for result in results]
    write_json(outputs[0] if len(outputs) == 1 else outputs, out)
    for line in _warnings(results):
        print(line, file=sys.stderr)
    return 0


#: Priorities of the actions whose cards are warnings or critical (CDS Hooks indicator), echoed on stderr.
_WARNING_PRIORITIES = {"urgent": "warning", "asap": "critical", "stat": "critical"}


def _warnings(results: list[Any]) -> list[str]:
    """One line per warning or critical finding and per problem the engine reported, so that a script sees
    them (unreadable data, safety findings) without reading the CarePlan; they do not change the exit code."""
    lines = []
    for result in results:
        for action in result.actions:
            level = _WARNING_PRIORITIES.get(action.fields.get("priority"))
            if level:
                text = " ".join(part for part in (action.fields.get("title"), action.fields.get("description")) if part)
                lines.append(f"{level}: {text}")
        for issue in result.issues:
            if issue.severity in ("warning", "error", "fatal"):
                lines.append(f"{issue.severity}: {issue.diagnostics}")
    return lines


# ---------------------------------------------------------------------------------- push


def entry_line(outcome: Any) -> str:
    """``ok  200 OK  PUT ValueSet/x`` (or ``FAIL`` with the server's diagnostics) for one entry."""
    return f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.status:<16} {outcome.request}{outcome.detail}"


def cmd_push(args: argparse.Namespace) -> int:
    """Send the artifacts to a FHIR server in transactions of at most --batch-size entries, in dependency order.

    A progress line per stored batch and a line per entry on standard output; at the first batch the server does
    not store, the server's OperationOutcome, the batch and what was stored before it on standard error, exit 1.
    """
    from service.push import PushError, issue_lines, plan, push

    if not args.dry_run and not args.fhir_server:
        raise UsageError("--fhir-server is required (or --dry-run to print the plan without sending anything)")
    content = read_content(args)
    batches = plan(content, args.batch_size)
    total = sum(len(b.entries) for b in batches)
    target = args.fhir_server or "a FHIR server"
    print(f"{total} artifacts for {target} in {len(batches)} transaction(s) of at most {args.batch_size} entries")
    if args.dry_run:
        for batch in batches:
            print(f"{batch.label()}: {len(batch.entries)} entries ({batch.summary()})")
            for request in batch.requests():
                print(f"  {request}")
        print("dry run: nothing was sent")
        return 0

    def stored(result: Any) -> None:
        print(f"{result.batch.label()}: stored {len(result.outcomes)} entries ({result.batch.summary()})")
        for outcome in result.outcomes:
            print(entry_line(outcome))

    try:
        results = push(batches, args.fhir_server, args.token, on_stored=stored)
    except PushError as exc:
        for outcome in exc.outcomes:
            print(entry_line(outcome))
        print(f"error: {exc}", file=sys.stderr)
        for line in issue_lines(exc.outcome):
            print(f"  OperationOutcome: {line}", file=sys.stderr)
        print(_push_state(exc, batches), file=sys.stderr)
        return 1
    accepted = sum(len(r.outcomes) for r in results)
    print(f"{accepted} of {total} entries accepted")
    return 0


def _push_state(error: Any, batches: list[Any]) -> str:
    """What the server holds after a failed push: the batches stored before the failure, and those not sent."""
    stored = [r.batch for r in error.stored]
    done = "; ".join(f"{b.label()} ({len(b.entries)} entries: {b.summary()})" for b in stored) or "nothing"
    failed = error.failed.number if error.failed else 0
    unsent = [b.label() for b in batches if b.number > failed]
    entries = sum(len(b.entries) for b in stored)
    line = f"stored before the failure: {done}; {entries} of {sum(len(b.entries) for b in batches)} entries stored"
    if unsent:
        line += f"; not sent: {', '.join(unsent)}"
    return line


# ---------------------------------------------------------------------------------- serve

LOOPBACK = ("127.0.0.1", "localhost", "::1")

#: Run in a separate Python process by ``serve``: waits until the port accepts connections, then prints the
#: service's addresses once. A process of its own, standard library only, so that nothing runs beside gunicorn's
#: master when it forks its workers; it stops with the service, and ignores Ctrl-C (the service reports that).
_ANNOUNCER = """
import os, signal, socket, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
host, port, parent, text = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 600
while time.monotonic() < deadline and os.getppid() == parent:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        time.sleep(0.1)
        continue
    sys.stderr.write(text)
    sys.stderr.flush()
    break
"""


def service_addresses(host: str, port: int) -> str:
    """The lines ``serve`` prints once the port is bound: where the hooks, the page and the health checks are."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    return (f"serving on {base}\n"
            f"  CDS Hooks discovery: {base}/cds-services\n"
            f"  protocol page:       {base}/protocol\n"
            f"  health:              {base}/healthz (ready: {base}/readyz)\n")


def check_port(host: str, port: int) -> None:
    """Bind the address once, as gunicorn will, so that a taken port is one clear line before anything starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not a known address ({exc.strerror})") from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} is in use: pick another with --port") from exc
            if exc.errno == errno.EACCES:
                raise UsageError(f"port {port} needs privileges this user does not have: pick one above 1023 with --port") from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host}: not an address of this machine") from exc
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc


def start_announcer(host: str, port: int) -> subprocess.Popen | None:
    """The process that prints the addresses once the port accepts connections (None if it cannot start)."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        return subprocess.Popen([sys.executable, "-c", _ANNOUNCER, target, str(port), str(os.getpid()), service_addresses(host, port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except OSError:
        return None


def _content_origin(settings: Any, source: ContentSource) -> tuple[list[Path], str]:
    """The folders the service will read and where that choice came from, for the start lines."""
    folders = settings.content_folders()
    if folders is None:  # the installed copy, which is the checkout's own in an editable install
        reason = source.reason if source.directory == CONTENT_DIR else "the copy installed with the package"
        return protocol_folders() or [CONTENT_DIR], reason
    setting = "content_dirs" if settings.content_dirs and folders == list(settings.content_dirs) else "content_dir"
    origin = settings.sources.get(setting, "built-in default")
    if origin == "the command line":
        return [Path(f) for f in folders], "--content"
    if origin == "the address served (default)":
        return [Path(f) for f in folders], source.reason
    return [Path(f) for f in folders], origin


def without_password(value: Any) -> Any:
    """A setting as it may be printed: the password of a URL (``postgresql://user:secret@host/db``) replaced by ``***``."""
    if not isinstance(value, str) or "://" not in value:
        return value
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the CDS Hooks service under gunicorn.

    The mode is what the configuration says (file, environment); only when nothing sets it does the address decide:
    development on a loopback address, production elsewhere. Development mode is refused where trusted clients are
    configured (a production set-up behind a local proxy must not fall back to development), and off loopback
    without --insecure. The start lines say which source set the mode, the database, the trusted clients and the
    content; the addresses are printed once the port is bound, and a taken port stops it before anything starts.
    """
    from service.config import ENV_PREFIX, ConfigError, Settings
    from service.server import run

    source = content_source(args)
    overrides: dict[str, Any] = {"content_dir": str(args.content)} if args.content else {}
    if args.timezone is not None:
        overrides["timezone"] = args.timezone
    loopback = args.host in LOOPBACK
    defaults: dict[str, Any] = {"mode": "development" if loopback or args.insecure else "production"}
    if source.directory != CONTENT_DIR:
        defaults["content_dir"] = str(source.directory)
        if not args.content:  # the checkout: every protocol folder of it
            defaults["content_dirs"] = [str(f) for f in protocol_folders(source.directory.parent)] or [str(source.directory)]
    try:
        settings = Settings.load(overrides=overrides, defaults=defaults)
    except ConfigError as exc:
        if not loopback and not args.insecure and "trusted_clients" in str(exc):
            print(f"error: refusing to serve on {args.host} without a trusted-clients configuration "
                  f"(set {ENV_PREFIX}TRUSTED_CLIENTS, or pass --insecure for a development server on this address)", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.mode == "development" and settings.trusted_clients:
        print(f"error: refusing development mode with trusted clients configured (trusted_clients from "
              f"{settings.sources['trusted_clients']}); set mode to production ({ENV_PREFIX}MODE=production)", file=sys.stderr)
        return 2
    if settings.mode == "development" and not loopback and not args.insecure:
        print(f"error: refusing development mode on {args.host} (mode from {settings.sources['mode']}); "
              "pass --insecure for a development server on this address", file=sys.stderr)
        return 2
    folders, origin = _content_origin(settings, source)
    load_contents(folders)
    check_port(args.host, args.port)
    if settings.mode == "development" and not loopback:
        print(f"warning: development mode on {args.host}: the public sandbox issuer is trusted and calls without a JWT are "
              "accepted; never do this with real patient data", file=sys.stderr)
    print(f"starting the CDS Hooks service ({settings.mode} mode) on {args.host}:{args.port}", file=sys.stderr)
    for name in ("mode", "database", "trusted_clients"):
        print(f"  {name}: {without_password(getattr(settings, name)) or 'none'} (from {settings.sources[name]})", file=sys.stderr)
    print(f"  content: {', '.join(map(str, folders))} (from {origin})", file=sys.stderr)
    announcer = start_announcer(args.host, args.port)
    try:
        run(args.host, args.port, settings)
    finally:
        if announcer is not None:
            stop_announcer(announcer)
    return 0


def stop_announcer(announcer: subprocess.Popen) -> None:
    """End the announcing process if it still waits, and collect it."""
    if announcer.poll() is None:
        announcer.terminate()
    try:
        announcer.wait(5)
    except subprocess.TimeoutExpired:
        announcer.kill()
        announcer.wait(5)


# ---------------------------------------------------------------------------------- republish

#: Elements every artifact takes from publication.json as they are.
PUBLICATION_ELEMENTS = ("version", "status", "experimental", "date", "publisher", "contact", "jurisdiction")


def current_base(content: Content) -> str:
    """The canonical base the artifacts are written under now (their ``url`` without ``/Type/id``)."""
    bases = set()
    for resource in content.resources:
        url, suffix = resource.get("url"), f"/{resource['resourceType']}/{resource.get('id')}"
        if isinstance(url, str) and url.endswith(suffix):
            bases.add(url[: -len(suffix)])
    if len(bases) != 1:
        found = ", ".join(sorted(bases)) or "none"
        raise UsageError(f"{content.directory}: the artifacts must share one canonical base to be republished (found: {found})")
    return bases.pop()


def _timestamp(date: str) -> str:
    """An expansion timestamp for a publication date (midnight UTC of a date; a dateTime as it is)."""
    return f"{date}T00:00:00Z" if len(date) == 10 else date


def _expansion_id(url: str, version: str) -> str:
    """The identifier of a ValueSet's expansion: one UUID per url and version (as scripts/make_valuesets.py gives)."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{url}|{version}')}"


def republished(resource: dict[str, Any], old_base: str, publication: dict[str, Any]) -> dict[str, Any]:
    """The artifact under the publication's canonical base, version and publisher.

    Every string naming the old base (urls, canonical references, code systems, ``memberOf()`` in FHIRPath) names the
    new one; the card label's ``(version x)`` follows the version; a generated ValueSet expansion gets the
    identifier and timestamp of the new url, version and date."""
    new_base = str(publication["canonical"]).rstrip("/")
    old_version, new_version = str(resource.get("version", "")), str(publication["version"])
    pattern = re.compile(re.escape(old_base) + r"(?![\w.\-])")

    def rewrite(value: Any) -> Any:
        if isinstance(value, str):
            text = pattern.sub(new_base, value)
            return text.replace(f"(version {old_version})", f"(version {new_version})") if old_version else text
        if isinstance(value, list):
            return [rewrite(item) for item in value]
        if isinstance(value, dict):
            return {key: rewrite(item) for key, item in value.items()}
        return value

    old = resource
    new = rewrite(resource)
    for element in PUBLICATION_ELEMENTS:
        if element in publication:
            new[element] = publication[element]
    expansion = new.get("expansion")
    if new["resourceType"] == "ValueSet" and isinstance(expansion, dict):
        if expansion.get("identifier") == _expansion_id(str(old.get("url")), old_version):
            expansion["identifier"] = _expansion_id(str(new.get("url")), new_version)
        if isinstance(old.get("date"), str) and expansion.get("timestamp") == _timestamp(old["date"]):
            expansion["timestamp"] = _timestamp(str(new["date"]))
    return new


def cmd_republish(args: argparse.Namespace) -> int:
    """Rewrite every artifact of the content folder under the canonical base, version and publisher of its
    publication.json (after that file was changed), so that the artifacts and publication.json agree again."""
    content = read_content(args)
    old_base = current_base(content)
    changed = 0
    for resource in content.resources:
        new = republished(resource, old_base, content.publication)
        if new != resource:
            path = content.file_of(resource)
            if path is None:
                raise UsageError(f"{resource['resourceType']}/{resource.get('id')}: no file to write it to")
            path.write_text(json.dumps(new, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            changed += 1
    pub = content.publication
    print(f"rewrote {changed} of {len(content.resources)} artifacts in {content.directory}: "
          f"{old_base} -> {pub['canonical']}, version {pub['version']}")
    return 0


# ---------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    """Write the feedback report (index.html, the figures as CSV, each chart as SVG) into the --out folder.

    The database is the service's ``database`` setting (configuration file, environment) unless --database names
    one; the content is --content, else the folders the service reads (its content settings, else every protocol
    folder of the checkout or of the installed copy), so that every card is named from the protocol it came from.
    """
    from service.cds_hooks.feedback import FeedbackStore
    from service.config import ConfigError, Settings, database_kind
    from service.report.figures import read_figures
    from service.report.writer import write_report

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder (index.html and the CSV files are written into it)")
    try:
        settings = Settings.load(overrides={"database": args.database} if args.database else {})
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    database = settings.database
    if database_kind(database) == "sqlite" and not Path(database.removeprefix("sqlite:///")).is_file():
        raise UsageError(f"the database {database} does not exist (from {settings.sources['database']}); "
                         "name the service's with --database or BACK_SPASM_CDS_DATABASE")
    folders = None if args.content is not None else settings.content_folders()
    if folders:
        print(f"content: {', '.join(folders)} (the service's content setting)", file=sys.stderr)
        content = load_contents(folders)
    elif args.content is None:  # as the service reads it: every protocol folder of the checkout, or of the installed copy
        source = content_source(args)
        print(source.describe(), file=sys.stderr)
        content = load_contents(protocol_folders(source.directory.parent) or [source.directory])
    else:
        content = read_content(args)
    print(f"database: {without_password(database)} (from {settings.sources['database']})", file=sys.stderr)
    figures = read_figures(FeedbackStore(database), content)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        written = write_report(args.out, figures, content)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: the report cannot be written there ({exc.strerror or exc})") from exc
    total = figures.total
    print(f"wrote {len(written)} files to {args.out}: {total.issued} cards issued, {total.accepted} accepted, "
          f"{total.overridden} overridden, {total.ignored} ignored")
    return 0


# ---------------------------------------------------------------------------------- the parser


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem and where to read about the options."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    """--port: a TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1 to 65535)")
    return port


def server_url(text: str) -> str:
    """--fhir-server: an absolute http(s) URL, the base of a FHIR server."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL (for example https://fhir.example.org/fhir)")
    return text


def batch_size(text: str) -> int:
    """--batch-size: a whole number of entries, at least 1."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{size}: a transaction holds at least 1 entry")
    return size


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """--content and --debug, accepted before or after the sub-command (after it, they never reset the value
    given before it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--content", type=Path, metavar="FOLDER", default=None if defaults else argparse.SUPPRESS,
                        help="content folder: one FHIR resource per file, with publication.json inside it or beside it "
                             "(default: protocol/content of the checkout run in, else the installed copy)")
    common.add_argument("--debug", action="store_true", default=False if defaults else argparse.SUPPRESS,
                        help="show the traceback of an error instead of one line")
    return common


SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("check the protocol content and list any problems",
                 "Check every artifact of the content folder: its structure against the FHIR models, the codes of the "
                 "elements the engine relies on, that every clinical code is in a shipped ValueSet, that every canonical "
                 "reference resolves and that every FHIRPath expression compiles with its variables defined. Prints OK, "
                 "or each problem with its file and element, and exits 1. Warns while the canonical base is a placeholder."),
    "bundle": ("write the artifacts as one Bundle",
               "Write every artifact as one Bundle in dependency order: a transaction (PUT Type/id, so importing it twice "
               "changes nothing) or a collection. Standard output unless --out names a file."),
    "apply": ("apply the protocol to a patient's data and print the CarePlan",
              "Apply the protocol to a Bundle of the patient's data, or to a CDS Hooks request body (its prefetch and "
              "draft orders), and print the resulting CarePlan (or, with --r5, an R5 Bundle) as JSON on standard output. "
              "Every warning or critical finding and every problem met in the data is a line on standard error."),
    "package": ("write the FHIR NPM package (.tgz)",
                "Write the artifacts as a FHIR NPM package (<packageId>-<version>.tgz) into the --out folder, for FHIR "
                "servers and implementation-guide tools."),
    "push": ("send the artifacts to a FHIR server",
             "Send the artifacts to a FHIR server as transactions of at most --batch-size entries, in dependency order "
             "(CodeSystem, ValueSet, StructureDefinition, Library, ActivityDefinition, PlanDefinition), with a progress "
             "line per batch. At the first batch the server does not store, prints the server's OperationOutcome, which "
             "batch failed and which were stored, and exits 1. --dry-run prints the plan without sending anything."),
    "serve": ("run the CDS Hooks service (gunicorn)",
              "Run the CDS Hooks service under gunicorn. Prints where its settings came from, then, once the port is "
              "bound, the addresses of the hooks, the protocol page and the health checks. On a loopback address it "
              "runs in development mode unless the configuration says otherwise."),
    "report": ("write the feedback report (HTML with charts, and CSV) from the stored cards and feedback",
               "Read the cards the service issued and the feedback clinicians sent about them, and write into the --out "
               "folder index.html (per recommendation and safety rule: cards issued, accepted, overridden and ignored; "
               "override reasons; cards per week of issue, with charts) and the same figures as CSV files. Counts and "
               "codes only: the database keeps nothing about patients."),
    "republish": ("rewrite the artifacts under publication.json's canonical base and version",
                  "After publication.json was changed: rewrite every artifact of the content folder under its canonical "
                  "base, version, status, date and publisher (urls, canonical references, code systems and FHIRPath "
                  "memberOf() alike). Then rebuild the ValueSets and run validate."),
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface, one sub-command per task."""
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0], parents=[_common_options(True)])
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options(False)

    def command(name: str, func: Command) -> argparse.ArgumentParser:
        summary, description = SUBCOMMANDS[name]
        p = sub.add_parser(name, help=summary, description=description, parents=[common])
        p.set_defaults(func=func)
        return p

    command("validate", cmd_validate)

    p = command("bundle", cmd_bundle)
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="output file (default: standard output)")
    p.add_argument("--type", choices=("transaction", "collection"), default="transaction", help="Bundle type (default: transaction)")
    p.add_argument("--conditional", action="store_true",
                   help="create each artifact only if the server has none with its url and version (POST with ifNoneExist)")

    p = command("apply", cmd_apply)
    p.add_argument("--data", type=Path, required=True, metavar="FILE", help="a Bundle of the patient's data, or a CDS Hooks request body")
    p.add_argument("--plan", default=None, help="PlanDefinition id or canonical (default: those the hook or patient-view triggers)")
    p.add_argument("--at", default=None, metavar="WHEN",
                   help="the clock, ISO 8601, e.g. 2026-11-25T10:00:00Z (default: now; without an offset: local time in --timezone)")
    p.add_argument("--timezone", default=None, metavar="NAME",
                   help=f"IANA time zone in which dates without a time are read (default: ${TIMEZONE_VARIABLE}, else UTC)")
    p.add_argument("--r5", action="store_true", help="R5 output: a Bundle whose first entry is the RequestOrchestration")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="output file (default: standard output)")

    p = command("package", cmd_package)
    p.add_argument("--out", type=Path, default=Path("."), metavar="FOLDER", help="output folder, created if missing (default: the current folder)")

    p = command("push", cmd_push)
    p.add_argument("--fhir-server", type=server_url, default=None, metavar="URL", help="base URL of the FHIR server (required unless --dry-run)")
    p.add_argument("--token", default=None, help="bearer token for the server")
    p.add_argument("--batch-size", type=batch_size, default=50, metavar="N",
                   help="most entries in one transaction (default: 50, a common server limit)")
    p.add_argument("--dry-run", action="store_true", help="print the transactions that would be sent, send nothing")

    p = command("serve", cmd_serve)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8080, help="port, 1 to 65535 (default: 8080)")
    p.add_argument("--insecure", action="store_true", help="allow development mode on a non-loopback address (never with real data)")
    p.add_argument("--timezone", default=None, metavar="NAME",
                   help="IANA time zone in which dates without a time are read (overrides the timezone setting; default UTC)")

    command("republish", cmd_republish)

    p = command("report", cmd_report)
    p.add_argument("--out", type=Path, required=True, metavar="FOLDER", help="output folder, created if missing")
    p.add_argument("--database", default=None, metavar="DATABASE",
                   help="the service's database: SQLite file or postgresql:// URL (default: the database setting)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: the exit status (0 done, 1 problems found or a call that failed, 2 a
    mistake in what was asked)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already reported in one line
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.func(args)
    except (UsageError, ContentError) as exc:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a failure that is not the user's: one line, the traceback with --debug
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
