"""The ``back-spasm-cds`` command: check the protocol content, export it, apply it to a patient, serve it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any

from protocol.content import ContentError, load_content

Command = Callable[[argparse.Namespace], int]


def _write_json(data: Any, out: Path | None) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every artifact; print the problems and exit 1 if there are any."""
    from protocol.validation import validate_content

    content = load_content(args.content)
    problems = validate_content(content)
    if problems:
        print(f"{len(problems)} problem(s) in {content.directory}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"OK: {len(content.resources)} artifacts in {content.directory} "
          f"(version {content.publication['version']}, {content.publication['canonical']})")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    """Write the artifacts as a transaction or collection Bundle."""
    from protocol.bundle import artifact_bundle

    content = load_content(args.content)
    _write_json(artifact_bundle(content, args.type), args.out)
    if args.out:
        print(f"wrote {args.type} Bundle of {len(content.resources)} artifacts to {args.out}", file=sys.stderr)
    return 0


#: The service's ``timezone`` setting as an environment variable; ``apply`` reads it too when --timezone is not given.
TIMEZONE_VARIABLE = "BACK_SPASM_CDS_TIMEZONE"


def _clock(text: str | None, zone: tzinfo = timezone.utc) -> datetime:
    """--at: an ISO date/time with offset (without one, a date or a time is local time in the zone); default now."""
    if text is None:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ContentError(f"--at {text!r}: not an ISO 8601 date or date-time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def cmd_apply(args: argparse.Namespace) -> int:
    """Apply the protocol to a Bundle of patient data or to a CDS Hooks request body; print the result.

    Exit 2 for a request that names a draft order of another patient (a request error, as the service's 400),
    1 for any other call that cannot be made.
    """
    from protocol.content import read_json
    from protocol.engine import ApplyError, Engine
    from protocol.output import bundle_r5, careplan_r4
    from protocol.requests import DraftForAnotherPatient, calls_for_bundle, calls_for_hook, is_hook_request, run_calls

    from protocol.fhirpath import time_zone

    name = args.timezone if args.timezone is not None else os.environ.get(TIMEZONE_VARIABLE, "UTC")
    try:
        zone = time_zone(name)
    except ValueError as exc:
        origin = "--timezone" if args.timezone is not None else TIMEZONE_VARIABLE
        print(f"error: {origin}: {exc}", file=sys.stderr)
        return 2
    data = read_json(args.data)
    engine = Engine(load_content(args.content), timezone=zone)
    try:
        calls = calls_for_hook(engine, data) if is_hook_request(data) else calls_for_bundle(engine, data, args.plan)
        if args.plan:
            calls = [c for c in calls if c.plan == args.plan or engine.plan(args.plan).resource["id"] == c.plan]
        results = run_calls(engine, calls, _clock(args.at, zone))
    except DraftForAnotherPatient as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ApplyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write = bundle_r5 if args.r5 else careplan_r4
    outputs = [write(result) for result in results]
    _write_json(outputs[0] if len(outputs) == 1 else outputs, args.out)
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


def cmd_package(args: argparse.Namespace) -> int:
    """Write the FHIR NPM package (.tgz)."""
    from protocol.package import build_package

    path = build_package(load_content(args.content), args.out)
    print(f"wrote {path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Send the transaction Bundle to a FHIR server and report each entry; exit 1 if anything was refused."""
    from service.push import PushError, push

    try:
        outcomes = push(load_content(args.content), args.fhir_server, args.token)
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        print(f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.status:<16} {outcome.request}{outcome.detail}")
    refused = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(refused)} of {len(outcomes)} entries accepted", file=sys.stderr if refused else sys.stdout)
    return 1 if refused else 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the CDS Hooks service under gunicorn.

    The mode is what the configuration says (file, environment); only when nothing sets it does the address decide:
    development on a loopback address, production elsewhere. Development mode is refused where trusted clients are
    configured (a production set-up behind a local proxy must not fall back to development), and off loopback
    without --insecure. The start line says which source set the mode, the database and the trusted clients.
    """
    from service.config import ENV_PREFIX, ConfigError, Settings
    from service.server import run

    overrides: dict[str, Any] = {"content_dir": str(args.content)} if args.content else {}
    if args.timezone is not None:
        overrides["timezone"] = args.timezone
    loopback = args.host in LOOPBACK
    defaults = {"mode": "development" if loopback or args.insecure else "production"}
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
    if settings.mode == "development" and not loopback:
        print(f"warning: development mode on {args.host}: the public sandbox issuer is trusted and calls without a JWT are "
              "accepted; never do this with real patient data", file=sys.stderr)
    print(f"serving CDS Hooks ({settings.mode} mode) on http://{args.host}:{args.port}/cds-services", file=sys.stderr)
    for name in ("mode", "database", "trusted_clients"):
        print(f"  {name}: {getattr(settings, name) or 'none'} (from {settings.sources[name]})", file=sys.stderr)
    run(args.host, args.port, settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface, one sub-command per task."""
    parser = argparse.ArgumentParser(prog="back-spasm-cds", description=__doc__)
    parser.add_argument("--content", type=Path, default=None, help="content folder (default: the packaged protocol)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check the protocol content and list any problems")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("bundle", help="write the artifacts as one Bundle")
    p.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    p.add_argument("--type", choices=("transaction", "collection"), default="transaction", help="Bundle type (default: transaction)")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("apply", help="apply the protocol to a patient's data and print the CarePlan")
    p.add_argument("--data", type=Path, required=True, help="a Bundle of the patient's data, or a CDS Hooks request body")
    p.add_argument("--plan", default=None, help="PlanDefinition id or canonical (default: those the hook or patient-view triggers)")
    p.add_argument("--at", default=None, help="the clock, ISO 8601 (default: now; without an offset: local time in --timezone)")
    p.add_argument("--timezone", default=None, metavar="NAME",
                   help=f"IANA time zone in which dates without a time are read (default: ${TIMEZONE_VARIABLE}, else UTC)")
    p.add_argument("--r5", action="store_true", help="R5 output: a Bundle whose first entry is the RequestOrchestration")
    p.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("package", help="write the FHIR NPM package (.tgz)")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: the current folder)")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("push", help="send the artifacts to a FHIR server as one transaction")
    p.add_argument("--fhir-server", required=True, help="base URL of the FHIR server")
    p.add_argument("--token", default=None, help="bearer token for the server")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("serve", help="run the CDS Hooks service (gunicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument("--insecure", action="store_true", help="allow development mode on a non-loopback address (never with real data)")
    p.add_argument("--timezone", default=None, metavar="NAME",
                   help="IANA time zone in which dates without a time are read (overrides the timezone setting; default UTC)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ContentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
