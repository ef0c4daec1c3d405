"""Shared helpers of the FHIRPath cross-checks: the content's expressions evaluated by the engine and by two oracles.

Every FHIRPath expression of the content -- each Library variable in order, each PlanDefinition variable,
applicability condition and dynamicValue, each ActivityDefinition dynamicValue -- is evaluated by the engine
over a dozen varied test records, in the environment the engine builds for it (``Evaluation``: the values of
the ``%variables`` it reads, as JSON with their FHIR type). The oracles then evaluate the same text with the
same variable values: fhirpathpy (``fhirpathpy_results``) and HL7's fhirpath.js through
``tests/fhirpath_js/run.mjs`` (``fhirpath_js_results``). Feeding both the engine's values isolates each
expression: a difference is the expression's own, never one inherited from an earlier variable.

What the oracles cannot do alike is given to them the same way (``ORACLE_SETUP`` says so in the report):

- ``now()`` and ``today()`` read the real clock in both (neither takes a clock): the text they get has them
  replaced by literals of the engine's clock (``fixed_clock``); the engine evaluates the original text.
- ``memberOf()``: neither has terminology. Both get the same user function, answering from the content's
  shipped ValueSet expansions (``valueset_codes``).
- ``resolve()``: fhirpathpy lacks it and fhirpath.js's needs a FHIR server. Both get the same user function
  resolving ``Type/id`` in the record and ``#id`` in the resource that holds the reference.

Differences are explained in tests/data/fhirpath-differences.json (``explain``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from protocol.engine.activity import UnsupportedKind, new_request
from protocol.engine.apply import Engine, ScopeView
from protocol.engine.content import load_content
from protocol.engine.logic import EXPRESSION_LANGUAGE
from tests import patients as p

DATA = Path(__file__).resolve().parent / "data"
DIFFERENCES_FILE = DATA / "fhirpath-differences.json"
NODE_PROJECT = Path(__file__).resolve().parent / "fhirpath_js"
PATHWAY = "back-spasm-treatment-pathway"
REVIEW = "back-spasm-order-review"
SCT_URL = "http://snomed.info/sct"
LOINC_URL = "http://loinc.org"
UCUM_URL = "http://unitsofmeasure.org"
ORACLE_SETUP = ("now()/today() replaced by literals of the engine's clock in the oracles' text; memberOf() and resolve() "
                "given to both oracles as the same user functions over the content's ValueSet expansions and the record")


def engine_fhirpath() -> Any:
    """The engine's FHIRPath module: the one import of it in the cross-checks, so that a rename is one line here."""
    from protocol.engine import fhirpath
    return fhirpath


# ---------------------------------------------------------------------------------- the records


@dataclass
class Record:
    """A patient's record, the draft orders of an ordering session (if any), and the clock."""

    name: str
    resources: list[dict]
    patient_id: str
    drafts: list[dict] = field(default_factory=list)
    now: datetime = p.CLOCK


def _sandbox(name: str) -> Record:
    """A request captured from the CDS Hooks Sandbox: its prefetch as the record, its draft orders as drafts."""
    body = json.loads((DATA / "sandbox-requests" / name).read_text())["body"]
    resources: list[dict] = []
    for value in (body.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in value.get("entry") or [] if "resource" in e]
        elif isinstance(value, dict):
            resources.append(value)
    drafts = [e["resource"] for e in ((body["context"].get("draftOrders") or {}).get("entry") or [])]
    return Record(f"sandbox-{name.removesuffix('.json')}", resources, body["context"]["patientId"], drafts)


def records() -> list[Record]:
    """Varied records: in and out of scope, each phase, contraindications, both medication shapes, date-only values."""
    out: list[Record] = []

    early = p.Patient(45)  # phase 1, severe, pain 8, physical therapy on record, on sertraline (MedicationStatement)
    early.spasm(20, severity=p.SEVERE)
    early.pain(8)
    early.physical_therapy("procedure", days_ago=12)
    early.medication(p.SERTRALINE, kind="statement", shape="contained")
    out.append(Record("phase-1-severe-sertraline-statement", early.resources, early.id))

    second = p.Patient(38)  # phase 2, onset as a Period, moderate; pain as an integer; a draft of 30 days of 10 mg
    second.spasm(60, onset="period", severity=p.MODERATE, code=p.SPASM_SCT)
    second.pain(7, hours_ago=5, as_integer=True)
    second.physical_therapy("encounter", days_ago=3)
    out.append(Record("phase-2-period-onset-draft-30-days", second.resources, second.id,
                      [second.draft_medication(p.CYCLOBENZAPRINE_10, per_day=3, days=30)]))

    third = p.Patient(52)  # phase 3, date-only onset, on phenelzine (separate Medication resource), stopped MAOI
    third.spasm(None, days_ago=10)
    third.resources[-1]["onsetDateTime"] = p.day(10)
    third.medication(p.PHENELZINE, shape="reference")
    third.medication(p.LINEZOLID, kind="statement", status="completed", started_days_ago=20, ended_days_ago=13)
    third.physical_therapy("careplan", days_ago=30)
    out.append(Record("phase-3-date-only-onset-maoi-reference", third.resources, third.id,
                      [third.draft_medication(p.CYCLOBENZAPRINE_5, dose_mg=5, shape="contained")]))

    fourth = p.Patient(birth_date="1979")  # phase 4, onset given as text, birth year only, recorded date only
    fourth.spasm(None, days_ago=40, onset="string")
    fourth.resources[-1]["onsetString"] = p.day(40)
    fourth.spasm(None, days_ago=45, onset="recorded")
    fourth.resources[-1]["recordedDate"] = p.day(45)
    out.append(Record("phase-4-onset-string-birth-year", fourth.resources, fourth.id))

    contra = p.Patient(70)  # older adult with cardiac, hepatic, allergy, a long cyclobenzaprine order and tramadol
    contra.spasm(30, severity=p.SEVERE)
    contra.condition(p.HEART_FAILURE, onset_value=p.when(days_ago=200))
    contra.condition(p.ACUTE_MI, onset_value=p.when(days_ago=30))
    contra.condition(p.CIRRHOSIS, onset_value=p.day(400), onset="period")
    contra.condition(p.FATTY_LIVER, status="resolved")
    contra.allergy(p.CYCLOBENZAPRINE_INGREDIENT)
    contra.medication(p.CYCLOBENZAPRINE_10, started_days_ago=30)
    contra.medication(p.TRAMADOL, kind="statement", shape="reference")
    contra.medication(p.AMITRIPTYLINE, status="stopped")
    out.append(Record("older-adult-contraindications", contra.resources, contra.id,
                      [contra.draft_medication(p.CYCLOBENZAPRINE_ER_15, dose_mg=15, per_day=1, days=None, supply_days=30),
                       contra.draft_service(p.TENS_DEVICE, resource_type="DeviceRequest")]))

    child = p.Patient(17)  # out of scope: under 18
    child.spasm(30)
    out.append(Record("child-out-of-scope", child.resources, child.id))

    resolved = p.Patient(45)  # out of scope: the spasm is resolved, refuted or entered in error
    resolved.spasm(24 * 5, status="resolved")
    resolved.spasm(30, verification="refuted")
    resolved.spasm(10, verification="entered-in-error")
    out.append(Record("no-active-spasm", resolved.resources, resolved.id))

    flagged = p.Patient(61)  # red flag: cauda equina syndrome
    flagged.spasm(20)
    flagged.condition(("http://hl7.org/fhir/sid/icd-10-cm", "G83.4", "Cauda equina syndrome"), onset_value=p.when(hours_ago=10))
    out.append(Record("red-flag", flagged.resources, flagged.id))

    for name in ("whiplash-chronic-pain-older-adult.json", "chronic-low-back-pain-movement-therapy.json"):
        resources = p.synthea(name)
        patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        out.append(Record(f"synthea-{name.removesuffix('.json')}", resources, patient_id))
    base = p.Patient(45, base=p.synthea("chronic-pain-opioids.json"))  # Synthea's shapes with a spasm added
    base.spasm(100, severity=p.SEVERE)
    base.pain(9, hours_ago=30)
    base.medication(p.CYCLOBENZAPRINE_5, kind="statement", started_days_ago=2)
    out.append(Record("synthea-chronic-pain-opioids-with-spasm", base.resources, base.id,
                      [base.draft_medication(p.CYCLOBENZAPRINE_7_5, tablets=2, per_day=4, days=14)]))

    out.append(_sandbox("patient-view.json"))
    out.append(_sandbox("order-sign.json"))
    return out


def runs(record: Record) -> Iterator[tuple[str, list[dict], dict]]:
    """The $apply calls a CDS service makes for a record: the pathway, and the review of each draft order.

    Each call gets its own copy of the data, and its parameters are the drafts of that copy, as the service
    passes them (the same objects: a draft's ``#id`` references resolve in the record).
    """
    yield PATHWAY, copy.deepcopy(record.resources + record.drafts), {}
    for index in range(len(record.drafts)):
        data = copy.deepcopy(record.resources + record.drafts)
        drafts = data[len(record.resources):]
        yield REVIEW, data, {"draftOrder": drafts[index], "draftOrders": drafts}


# ---------------------------------------------------------------------------------- the engine's evaluations


@dataclass
class Evaluation:
    """One expression evaluated by the engine: where it is, its text, the variables it read, its focus, its result."""

    record: str
    plan: str
    where: str
    source: str
    env: dict[str, list[dict]]  # %name -> [{"value": JSON, "type": FHIR type or None}]
    focus: dict | None
    result: list[dict] | None  # None: the engine raised an evaluation error
    error: str | None = None


_VARIABLE = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|%(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)")


def variables_read(source: str) -> list[str]:
    """The %names an expression mentions (outside string literals), in order, each once."""
    names: list[str] = []
    for match in _VARIABLE.finditer(source):
        name = match.group(1)
        if name is None:
            continue
        name = name.strip("`")
        if name not in names:
            names.append(name)
    return names


def _typed(evaluator: Any, values: list) -> list[dict]:
    """Raw values as JSON with their FHIR type and, for elements, the path the engine knows them by (for their type)."""
    out = []
    for v in values:
        item = {"value": evaluator.to_json(v), "type": evaluator.type_name(v)}
        path = getattr(v, "path", None)
        if isinstance(path, str) and path and isinstance(item["value"], dict):
            item["path"] = path
        out.append(item)
    return out


class _Collector:
    """One $apply call's environment, walked as the engine walks it, each expression evaluated once per environment."""

    def __init__(self, engine: Any, record: Record, plan_id: str, data: list[dict], parameters: dict, seen: set[str]):
        self.engine = engine
        self.record = record
        self.plan_id = plan_id
        self.plan = engine.plan(plan_id)
        self.session, self.root, self.request = engine._session(data, record.now, record.patient_id, None, None, parameters)
        self.seen = seen
        self.out: list[Evaluation] = []
        for library in self.plan.libraries:
            engine._define_library(self.root, library, parameters)
        self.root.define_value("context", [self.session.node(self.plan.resource)])

    def evaluate(self, compiled: Any, scope: Any, extra: Mapping[str, list] | None = None) -> None:
        """Evaluate with the engine, keeping the values of the variables the text mentions (skipped if seen in this record)."""
        evaluator = self.engine.evaluator
        view = ScopeView(scope, extra)
        source = compiled.expression.source
        env = {name: _typed(evaluator, view[name]) for name in variables_read(source) if name in view}
        key = json.dumps([source, env], sort_keys=True, default=str)
        if key in self.seen:
            return
        self.seen.add(key)
        try:
            result, error = _typed(evaluator, compiled.expression(view, self.session.context)), None
        except engine_fhirpath().FhirPathEvaluationError as exc:
            result, error = None, str(exc)
        self.out.append(Evaluation(self.record.name, self.plan_id, compiled.where, source, env, None, result, error))

    def run(self) -> list[Evaluation]:
        """Library variables in order, then the plan's variables, then every action (whether it applies or not)."""
        for library in self.plan.libraries:
            for _, compiled in library.variables:
                self.evaluate(compiled, self.root)
        scope = self.root.child()
        for name, compiled in self.plan.variables:
            scope.define_variable(name, compiled)
            self.evaluate(compiled, scope)
        for action in self.plan.actions:
            self.action(action, scope)
        return self.out

    def action(self, action: Any, parent: Any) -> None:
        """An action's variables, conditions and dynamicValues, its definition's dynamicValues, then its children."""
        scope = parent.child()
        for name, requirement in action.inputs.items():
            scope.define_retrieve(name, requirement)
        for name, compiled in action.variables:
            scope.define_variable(name, compiled)
        for compiled in [c for _, c in action.variables] + action.conditions + [d.value for d in action.to_action]:
            self.evaluate(compiled, scope)
        activity = action.activity
        if activity is not None:
            session = self.session
            for library in activity.libraries:
                if library.resource["url"] not in session.libraries:
                    self.engine._define_library(scope, library, session.parameters)
            context = {"context": [session.node(activity.resource)]}
            for compiled in [d.value for d in activity.dynamic if d.plan is None] + action.roots:
                self.evaluate(compiled, scope, context)
            try:
                base = [session.node(new_request(activity.resource, self.request))]
            except UnsupportedKind:
                base = []
            for dynamic in [d for d in activity.dynamic if d.plan is not None] + action.to_resource:
                self.evaluate(dynamic.value, scope, {**context, "resource": base})
        for child in action.children:
            self.action(child, scope)


def content_evaluations(engine: Any, record: Record) -> list[Evaluation]:
    """Every expression of the plans a record's calls apply, each with the values it reads, evaluated by the engine."""
    seen: set[str] = set()
    out: list[Evaluation] = []
    for plan_id, data, parameters in runs(record):
        out += _Collector(engine, record, plan_id, data, parameters, seen).run()
    return out


# ---------------------------------------------------------------------------------- the suite's own expressions


def suite_expressions() -> list[tuple[str, dict | None]]:
    """The literal expressions of tests/test_fhirpath.py's fhirpath.js tables (CROSS_*), with the Bundle they read.

    Read from the file's syntax tree, not imported: the lists' string items, and the module's BUNDLE as the focus
    of CROSS_RESOURCE. Empty when the file or the tables are gone.
    """
    import ast

    path = Path(__file__).resolve().parent / "test_fhirpath.py"
    if not path.is_file():
        return []
    tree = ast.parse(path.read_text())
    lists: dict[str, list[str]] = {}
    bundle: dict | None = None
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        name = node.targets[0].id
        if name == "BUNDLE":
            try:
                bundle = ast.literal_eval(node.value)
            except ValueError:
                bundle = None
        elif name.startswith("CROSS_") and isinstance(node.value, ast.List):
            lists[name] = [e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    out: list[tuple[str, dict | None]] = []
    for name, expressions in lists.items():
        focus = bundle if name == "CROSS_RESOURCE" else None
        if name == "CROSS_RESOURCE" and bundle is None:
            continue
        out += [(e, focus) for e in expressions]
    return out


def suite_evaluations(engine: Any) -> list[Evaluation]:
    """The suite's literal expressions evaluated by the engine at the test clock (no variables)."""
    fhirpath = engine_fhirpath()
    evaluator = engine.evaluator
    context = fhirpath.EvaluationContext(now=p.CLOCK, member_of=engine.content.terminology.member_of, resolve=lambda ref: None)
    out = []
    for source, focus in suite_expressions():
        try:
            compiled = evaluator.compile(source)
            node = evaluator.node(copy.deepcopy(focus)) if focus is not None else None
            result, error = _typed(evaluator, compiled({}, context, node)), None
        except (fhirpath.FhirPathEvaluationError, fhirpath.FhirPathSyntaxError) as exc:
            result, error = None, str(exc)
        out.append(Evaluation("tests/test_fhirpath.py", "-", "CROSS tables", source, {}, focus, result, error))
    return out


# ---------------------------------------------------------------------------------- what both oracles are given


def valueset_codes(content: Any) -> dict[str, list[list[str]]]:
    """Every shipped ValueSet's expansion as [system, code] pairs, by url (and url|version)."""
    out: dict[str, list[list[str]]] = {}
    for resource in content.resources:
        if resource.get("resourceType") != "ValueSet":
            continue
        codes = [[c.get("system", ""), c.get("code", "")] for c in (resource.get("expansion") or {}).get("contains") or []]
        out[resource["url"]] = codes
        if resource.get("version"):
            out[f"{resource['url']}|{resource['version']}"] = codes
    return out


_NOW = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\b(now|today)\(\s*\)")


def fixed_clock(source: str, now: datetime) -> str:
    """The expression with now() and today() (outside string literals) replaced by literals of the clock."""
    utc = now.astimezone(UTC)
    literals = {"now": "@" + utc.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "today": "@" + now.date().isoformat()}

    def swap(match: re.Match) -> str:
        return match.group(0) if match.group(1) is None else literals[match.group(1)]
    return _NOW.sub(swap, source)


# ---------------------------------------------------------------------------------- fhirpathpy


class _References:
    """Reference look-up for the oracles' resolve(): ``Type/id`` in the record, ``#id`` in the holding resource."""

    def __init__(self, resources: list[dict]):
        self.by_id = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources if isinstance(r, dict)}
        self.holder: dict[int, dict] = {}
        self.kept: list[Any] = []

    def register(self, resource: Any) -> None:
        """Remember, for each Reference in the resource, the resource that holds it (for ``#id``)."""
        def walk(value: Any, holder: dict) -> None:
            if isinstance(value, dict):
                if "reference" in value:
                    self.holder[id(value)] = holder
                for key, item in value.items():
                    if key != "contained":
                        walk(item, holder)
            elif isinstance(value, list):
                for item in value:
                    walk(item, holder)
        if isinstance(resource, dict):
            self.kept.append(resource)
            walk(resource, resource)

    def resolve(self, reference: Any) -> dict | None:
        if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
            return None
        text = reference["reference"]
        if text.startswith("#"):
            holder = self.holder.get(id(reference)) or {}
            return next((c for c in holder.get("contained") or [] if c.get("id") == text[1:]), None)
        return self.by_id.get(text)


def _member_of(codes: dict[str, list[list[str]]], item: Any, url: str) -> bool | None:
    """memberOf() from the expansions: a code, Coding or CodeableConcept against a ValueSet url."""
    members = codes.get(url)
    if members is None:
        return None
    pairs = {tuple(pair) for pair in members}
    if isinstance(item, str):
        return any(code == item for _, code in pairs)
    if not isinstance(item, dict):
        return False
    codings = item.get("coding") if "coding" in item or "text" in item else [item]
    return any(isinstance(c, dict) and (c.get("system", ""), c.get("code", "")) in pairs for c in codings or [])


@cache
def _fhirpathpy_literal(text: str) -> Any:
    import fhirpathpy
    return fhirpathpy.evaluate([], text, {}, options={"returnRawData": True})[0]


_DATE_TYPES = {"date", "dateTime", "instant"}
_PLAIN_TYPES = {"boolean", "integer", "decimal", "string", "code", "id", "uri", "url", "canonical", "markdown", "oid",
                "uuid", "positiveInt", "unsignedInt", "integer64", "base64Binary", "xhtml", None}


def _fhirpathpy_value(item: dict, references: _References) -> Any:
    """A value of the engine, typed for fhirpathpy: resources as dicts, date/times and times as literals, elements as nodes."""
    from fhirpathpy.engine.nodes import ResourceNode

    value, kind = item["value"], item["type"]
    if isinstance(value, dict) and value.get("resourceType"):
        references.register(value)
        return ResourceNode.create_node(value, value["resourceType"])
    if kind in _DATE_TYPES and isinstance(value, str):
        return _fhirpathpy_literal("@" + value)
    if kind == "time" and isinstance(value, str):
        return _fhirpathpy_literal("@T" + value)
    if kind in _PLAIN_TYPES or not isinstance(value, dict):
        return Decimal(str(value)) if kind == "decimal" and not isinstance(value, bool) else value
    references.register(value)
    path = item.get("path") or kind
    return ResourceNode.create_node(value, path) if path else value


class _FhirpathpyRun:
    """The user functions given to fhirpathpy (memberOf(), resolve()), reading the record of the evaluation in hand."""

    def __init__(self, codes: dict[str, list[list[str]]]):
        self.codes = codes
        self.references = _References([])
        self.table = {"memberOf": {"fn": self.member_of, "arity": {1: ["String"]}}, "resolve": {"fn": self.resolve}}

    def member_of(self, inputs: list, url: str) -> list:
        if not inputs:
            return []
        if len(inputs) > 1:
            raise ValueError("memberOf() on more than one item")
        answer = _member_of(self.codes, inputs[0], url)
        return [] if answer is None else [answer]

    def resolve(self, inputs: list) -> list:
        return [r for r in (self.references.resolve(i) for i in inputs) if r is not None]


def fhirpathpy_results(evaluations: list[Evaluation], content: Any, record_resources: Mapping[str, list[dict]]) -> list[dict]:
    """Each evaluation run through plain fhirpathpy (R4 model, each text parsed once) with the engine's variable values."""
    import fhirpathpy
    from fhirpathpy.models import models

    run = _FhirpathpyRun(valueset_codes(content))
    compiled: dict[str, Any] = {}
    out = []
    for evaluation in evaluations:
        run.references = _References(copy.deepcopy(record_resources.get(evaluation.record, [])))
        text = fixed_clock(evaluation.source, p.CLOCK)
        try:
            if text not in compiled:
                compiled[text] = fhirpathpy.compile(text, models["r4"], options={"userInvocationTable": run.table})
            env = {name: [_fhirpathpy_value(item, run.references) for item in items] for name, items in evaluation.env.items()}
            env.setdefault("sct", SCT_URL)
            env.setdefault("loinc", LOINC_URL)
            focus = copy.deepcopy(evaluation.focus) if evaluation.focus is not None else []
            out.append({"result": [_plain(v) for v in compiled[text](focus, env)]})
        except Exception as exc:  # noqa: BLE001 - fhirpathpy raises plain Exceptions (what it does not implement, its own bugs)
            out.append({"error": f"{type(exc).__name__}: {exc}"})
    return out


def _plain(value: Any) -> Any:
    """A fhirpathpy result item as JSON-like Python (its FP_* types as their text)."""
    if isinstance(value, (str, bool, int, float, Decimal)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    unit = getattr(value, "unit", None)
    if hasattr(value, "value") and unit is not None:
        return {"value": value.value, "unit": unit}
    return str(value)


# ---------------------------------------------------------------------------------- fhirpath.js


def fhirpath_js_input(evaluations: list[Evaluation], content: Any, record_resources: Mapping[str, list[dict]]) -> dict:
    """The document the Node runner reads: ValueSet codes, each record's resources once, and the cases."""
    return {
        "now": fixed_clock("now()", p.CLOCK)[1:],
        "valuesets": valueset_codes(content),
        "records": {name: resources for name, resources in record_resources.items()},
        "cases": [{"record": e.record, "expression": fixed_clock(e.source, p.CLOCK), "env": e.env, "focus": e.focus}
                  for e in evaluations],
    }


# ---------------------------------------------------------------------------------- comparing and explaining

_DATETIME = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")
_QUANTITY_TEXT = re.compile(r"^(-?\d+(?:\.\d+)?) (?:'([^']*)'|(years?|months?|weeks?|days?|hours?|minutes?|seconds?|milliseconds?))$")
_CALENDAR_UNITS = {"year": "a", "years": "a", "month": "mo", "months": "mo", "week": "wk", "weeks": "wk", "day": "d", "days": "d",
                   "hour": "h", "hours": "h", "minute": "min", "minutes": "min", "second": "s", "seconds": "s",
                   "millisecond": "ms", "milliseconds": "ms"}


def _quantity(number: Any, unit: Any) -> tuple:
    """A quantity as (decimal text, UCUM unit), a calendar duration keyword written as its UCUM unit."""
    return ("quantity", str(Decimal(str(number)).normalize()), _CALENDAR_UNITS.get(unit, unit))


def _date_key(text: str) -> Any:
    """A date/time text as (precision, instant in UTC), milliseconds dropped when zero.

    The records and the clock are in UTC and so is the engine's zone: a time without an offset is read as UTC
    (as the engine reads it there), and so is fhirpath.js's ``-00:00`` (it writes date/times in the process's zone,
    TZ=UTC). Different offsets for one instant compare equal.
    """
    match = _DATETIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if hour is None:
        return ("date", text)
    utc = zone is None or zone in ("Z", "-00:00")  # without an offset: the evaluation's zone, UTC in the cross-checks
    base = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0),
                    tzinfo=UTC if utc else datetime.strptime(zone.replace(":", ""), "%z").tzinfo)
    millis = round(float(fraction or "0") * 1000)
    precision = 4 + (minute is not None) + (second is not None)
    return ("instant", precision, (base + timedelta(milliseconds=millis)).astimezone(UTC).isoformat())


def normal(value: Any) -> Any:
    """One result item in a form every engine writes alike: numbers as decimals, date/times as instants, quantities."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, Decimal)):
        try:
            return ("number", str(Decimal(str(value)).normalize()))
        except InvalidOperation:
            return ("number", str(value))
    if isinstance(value, str):
        key = _date_key(value)
        if key is not None:
            return key
        quantity = _QUANTITY_TEXT.match(value)
        if quantity:
            return _quantity(quantity.group(1), quantity.group(2) or quantity.group(3))
        return value
    if isinstance(value, dict):
        if set(value) <= {"value", "unit", "system", "code", "comparator"} and "value" in value and ("unit" in value or "code" in value) \
                and value.get("system", UCUM_URL) == UCUM_URL:
            return _quantity(value["value"], value.get("code") or value.get("unit"))
        return {k: normal(v) for k, v in sorted(value.items()) if not k.startswith("__")}
    if isinstance(value, list):
        return [normal(v) for v in value]
    return str(value)


def engine_answer(evaluation: Evaluation) -> dict:
    """The engine's answer in the oracles' form: a result list or an error."""
    if evaluation.result is None:
        return {"error": evaluation.error}
    return {"result": [item["value"] for item in evaluation.result]}


def same(engine: dict, oracle: dict) -> bool:
    """Both gave the same result (errors on both sides count as the same answer)."""
    if "error" in engine or "error" in oracle:
        return "error" in engine and "error" in oracle
    return json.dumps(normal(engine["result"]), sort_keys=True, default=str) == json.dumps(normal(oracle["result"]), sort_keys=True, default=str)


def load_explanations() -> list[dict]:
    """The explained differences of tests/data/fhirpath-differences.json."""
    return json.loads(DIFFERENCES_FILE.read_text())["differences"]


def explain(explanations: list[dict], oracle: str, evaluation: Evaluation, engine: dict, answer: dict) -> dict | None:
    """The first explanation for this oracle whose expression pattern (and oracle error pattern, if any) matches."""
    for entry in explanations:
        if oracle not in entry.get("oracles", {}):
            continue
        if not re.search(entry["pattern"], evaluation.source):
            continue
        needs_error = entry["oracles"][oracle].get("error")
        if needs_error is not None and not re.search(needs_error, answer.get("error") or ""):
            continue
        return entry
    return None


def differences(oracle: str, evaluations: list[Evaluation], answers: list[dict]) -> tuple[list[str], dict[str, int]]:
    """Unexplained differences (readable lines), and how many differences each explanation covered."""
    explanations = load_explanations()
    used = {entry["id"]: 0 for entry in explanations if oracle in entry.get("oracles", {})}
    unexplained = []
    for evaluation, answer in zip(evaluations, answers, strict=True):
        engine = engine_answer(evaluation)
        if same(engine, answer):
            continue
        entry = explain(explanations, oracle, evaluation, engine, answer)
        if entry is None:
            unexplained.append(f"{evaluation.record} {evaluation.where}: {evaluation.source[:160]!r}\n"
                               f"    engine={json.dumps(engine, default=str)[:400]}\n    {oracle}={json.dumps(answer, default=str)[:400]}")
        else:
            used[entry["id"]] += 1
    return unexplained, used


# ---------------------------------------------------------------------------------- running fhirpath.js


def fhirpath_js_dir() -> tuple[Path | None, str]:
    """The folder of an installed fhirpath.js (``FHIRPATH_JS_DIR``, else tests/fhirpath_js), or None and why not."""
    import os
    import shutil

    if shutil.which("node") is None:
        return None, "node is not installed: the fhirpath.js cross-check needs Node.js 20"
    configured = os.environ.get("FHIRPATH_JS_DIR")
    folder = Path(configured) if configured else NODE_PROJECT
    if not (folder / "node_modules" / "fhirpath" / "package.json").is_file():
        return None, (f"fhirpath.js is not installed in {folder} (run `npm ci` in tests/fhirpath_js, "
                      "or set FHIRPATH_JS_DIR to an installed copy as .ci/run does)")
    return folder, ""


def run_fhirpath_js(folder: Path, document: dict, timeout: float = 120) -> list[dict]:
    """Every case of the document evaluated by fhirpath.js in one Node process (TZ=UTC); the answers in order."""
    import os
    import subprocess

    completed = subprocess.run(["node", str(NODE_PROJECT / "run.mjs"), str(folder)], input=json.dumps(document),
                               capture_output=True, text=True, timeout=timeout, env={**os.environ, "TZ": "UTC"}, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the fhirpath.js runner failed ({completed.returncode}): {completed.stderr[-2000:]}")
    answers = json.loads(completed.stdout)
    if len(answers) != len(document["cases"]):
        raise RuntimeError(f"the fhirpath.js runner answered {len(answers)} cases of {len(document['cases'])}")
    return answers


# ---------------------------------------------------------------------------------- what both tests share


@lru_cache(maxsize=1)
def crosscheck_inputs() -> tuple[Any, list[Evaluation], dict[str, list[dict]]]:
    """The content, every evaluation of the engine (the content over the records, then the suite's tables), and each
    record's resources by record name; computed once per test session."""
    content = load_content()
    engine = Engine(content)
    chosen = records()
    evaluations = [e for record in chosen for e in content_evaluations(engine, record)]
    evaluations += suite_evaluations(engine)
    return content, evaluations, {r.name: r.resources + r.drafts for r in chosen}


def content_expression_texts(content: Any) -> set[str]:
    """The text of every FHIRPath Expression in the content's artifacts."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("language") == EXPRESSION_LANGUAGE and isinstance(value.get("expression"), str):
                found.add(value["expression"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for resource in content.resources:
        walk(resource)
    return found


def stale_explanations(oracle: str, used: dict[str, int]) -> list[str]:
    """Explanations for this oracle that matched no difference in this run."""
    return sorted(name for name, count in used.items() if count == 0)
