"""PlanDefinition/$apply and ActivityDefinition/$apply over a patient's data (FHIR R4 Clinical Reasoning).

The content is compiled once (``Engine``): every FHIRPath expression is parsed, every dynamicValue path
is planned, every canonical is resolved. Applying a plan is then a pure function of the inputs: the
patient's data, a clock and the $apply parameters go in, a CarePlan (or an R5 Bundle) comes out. No rule
of the protocol is written here: applicability, phases, doses and texts come from the artifacts.

Per call, a ``Session`` indexes the record once (``Record``), answers each data requirement from that
index, and evaluates each named variable at most once, and only if an expression needs it.

The engine has a local time zone (``Engine(..., timezone="UTC")``, an IANA name; ``apply`` and
``apply_activity`` can override it per call): dates without a time are read as days of that zone, by the
FHIRPath expressions (``EvaluationContext.timezone``: today(), lowBoundary(), comparisons ...) and by the
dateFilters of data requirements (the record gets the clock in that zone).

The work of a call can be bounded by its caller: ``max_resources`` refuses a record of more resources
(TooMuchData, before anything is evaluated), and a ``Deadline`` is checked before every expression, every
retrieve and every 16 items of the FHIRPath iterations (ApplyTimeout: the call gives no result at all).
Both are given per call, so the engine keeps no clock and no setting of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from protocol.engine.activity import RequestContext, UnsupportedKind, drop_unreferenced_contained, new_request
from protocol.engine.content import Content
from protocol.engine.fhirpath import (
    CompiledExpression,
    EvaluationContext,
    EvaluationTimeout,
    Evaluator,
    FhirPathEvaluationError,
    default_evaluator,
    time_zone,
)
from protocol.engine.jsondata import copy_json
from protocol.engine.logic import STANDARD_VARIABLES, USER_AND_SETTING_INPUTS, variables_of
from protocol.engine.parameters import ApplyParameters, ParameterValue
from protocol.engine.paths import PathError, PathPlan, plan_path
from protocol.engine.record import Record, RecordTooLarge

Json = dict[str, Any]
APPLICABILITY_BEHAVIOR = "http://hl7.org/fhir/StructureDefinition/cqf-applicabilityBehavior"

#: Elements of a PlanDefinition action that carry over to the RequestGroup action unchanged (R4 names).
COPIED = ("prefix", "title", "description", "textEquivalent", "priority", "code", "documentation", "relatedAction",
          "type", "groupingBehavior", "selectionBehavior", "requiredBehavior", "precheckBehavior", "cardinalityBehavior")


class ApplyError(ValueError):
    """The call cannot be made (unknown PlanDefinition or ActivityDefinition, no subject)."""


class TooMuchData(ApplyError):
    """The record holds more resources than the call allows (``max_resources``); nothing was evaluated."""

    def __init__(self, count: int, limit: int):
        super().__init__(f"the record holds {count} resources, more than the {limit} allowed")
        self.count = count
        self.limit = limit


class ApplyTimeout(ApplyError):
    """The call's deadline passed before it was done; there is no partial result."""

    def __init__(self) -> None:
        super().__init__("the time allowed for $apply has passed")


@dataclass(frozen=True)
class Deadline:
    """When a call must give up: a reading of ``clock`` (by default ``time.monotonic``) not to be reached."""

    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> "Deadline":
        """The deadline ``seconds`` from now on the clock."""
        return cls(clock() + seconds, clock)

    def passed(self) -> bool:
        """True once the clock has reached the deadline."""
        return self.clock() >= self.at


# ---------------------------------------------------------------------------------- compiled content


@dataclass
class Compiled:
    """An expression with where it came from, for messages."""

    expression: CompiledExpression
    where: str


@dataclass
class DynamicValue:
    """A dynamicValue: where it goes (None for the resource root) and what computes it."""

    path: str
    plan: PathPlan | None
    value: Compiled


@dataclass
class CompiledActivity:
    """An ActivityDefinition ready to apply."""

    resource: Json
    dynamic: list[DynamicValue]
    libraries: list["CompiledLibrary"]


@dataclass
class CompiledAction:
    """A PlanDefinition action ready to apply."""

    source: Json
    where: str
    conditions: list[Compiled]
    variables: list[tuple[str, Compiled]]
    inputs: dict[str, Json]
    activity: CompiledActivity | None
    to_action: list[DynamicValue]
    to_resource: list[DynamicValue]
    roots: list[Compiled]
    first_match: bool
    children: list["CompiledAction"]


@dataclass
class CompiledLibrary:
    """A logic Library: its data requirements, parameters and named variables."""

    resource: Json
    data: dict[str, Json]
    parameters: set[str]
    variables: list[tuple[str, Compiled]]


@dataclass
class CompiledPlan:
    """A PlanDefinition ready to apply."""

    resource: Json
    libraries: list[CompiledLibrary]
    variables: list[tuple[str, Compiled]]
    actions: list[CompiledAction]


def canonical_of(resource: Mapping[str, Any]) -> str:
    """``url|version`` of an artifact."""
    return f"{resource['url']}|{resource['version']}" if resource.get("version") else resource["url"]


# ---------------------------------------------------------------------------------- per-call session


@dataclass
class Issue:
    """Something that went wrong in one evaluation, reported in the result's OperationOutcome."""

    severity: str
    code: str
    diagnostics: str
    expression: str | None = None

    def to_fhir(self) -> Json:
        out: Json = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


class Scope:
    """Names visible to an expression: values given, retrieves and variables (each evaluated once, on demand)."""

    def __init__(self, session: "Session", parent: "Scope | None" = None):
        self.session = session
        self.parent = parent
        self.definitions: dict[str, tuple[str, Any]] = {}
        self.values: dict[str, list] = {}
        self._busy: set[str] = set()

    def define_value(self, name: str, value: list) -> None:
        self.values[name] = value

    def define_variable(self, name: str, compiled: Compiled) -> None:
        self.definitions[name] = ("variable", compiled)

    def define_retrieve(self, name: str, requirement: Json) -> None:
        self.definitions[name] = ("retrieve", requirement)

    def lookup(self, name: str) -> list:
        try:
            return self.resolve(name)
        except KeyError:
            self.session.report("error", "not-found", f"%{name} is not defined here")
            return []

    def resolve(self, name: str) -> list:
        """The value of ``%name`` in this scope or the nearest enclosing one, computed the first time it is read;
        KeyError when no scope defines it."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            if name in scope.definitions:
                return scope.compute(name)
            scope = scope.parent
        raise KeyError(name)

    def compute(self, name: str) -> list:
        kind, definition = self.definitions[name]
        if name in self._busy:
            self.session.report("error", "invariant", f"%{name} depends on itself")
            return []
        self._busy.add(name)
        try:
            if kind == "retrieve":
                self.session.check_deadline()
                value = [self.session.node(r) for r in self.session.record.retrieve(definition)]
            else:
                value = self.session.evaluate(definition, self)
        finally:
            self._busy.discard(name)
        self.values[name] = value
        return value

    def child(self) -> "Scope":
        return Scope(self.session, self)

    def defines(self, name: str) -> bool:
        """True if the name is visible here (nothing is computed)."""
        scope: Scope | None = self
        while scope is not None:
            if name in scope.values or name in scope.definitions:
                return True
            scope = scope.parent
        return False


class ScopeView(Mapping):
    """The %variables of one evaluation, computed only when the expression reads them."""

    __slots__ = ("scope", "extra")

    def __init__(self, scope: Scope, extra: Mapping[str, list] | None):
        self.scope = scope
        self.extra = extra or {}

    def __contains__(self, name: object) -> bool:
        return name in self.extra or (isinstance(name, str) and self.scope.defines(name))

    def __getitem__(self, name: str) -> list:
        """The value of a %variable: one walk up the scopes, computing a definition the first time it is read."""
        if name in self.extra:
            return self.extra[name]
        return self.scope.resolve(name)

    def __iter__(self):
        raise TypeError("the variables of an evaluation are read one by one")

    def __len__(self) -> int:
        raise TypeError("the variables of an evaluation are read one by one")


class Session:
    """One $apply call: the record, the clock, the scopes and the issues found on the way."""

    def __init__(self, engine: "Engine", record: Record, now: datetime, parameters: Mapping[str, Any] | None = None,
                 zone: tzinfo | None = None, deadline: Deadline | None = None):
        self.engine = engine
        self.record = record
        self.now = now
        self.parameters = parameters or {}
        self.libraries: set[str] = set()
        self.issues: list[Issue] = []
        self.deadline = deadline
        self.context = EvaluationContext(now=now, member_of=engine.content.terminology.member_of, resolve=record.resolve,
                                         timezone=zone if zone is not None else engine.timezone,
                                         expired=deadline.passed if deadline is not None else None)
        self._nodes: dict[int, Any] = {}

    def parameter_items(self, value: Any) -> list:
        """An input's FHIRPath items, in order: a resource as a node, a ParameterValue as its typed value (or its parts)."""
        items = value if isinstance(value, list) else ([] if value is None else [value])
        out: list = []
        for item in items:
            if isinstance(item, ParameterValue):
                holder = self.node({"resourceType": "Parameters", "parameter": [item.entry]})
                path = self.engine._value_path if item.is_value else self.engine._entry_path
                out.extend(path({}, self.context, [holder]))
            elif isinstance(item, Mapping):
                out.append(self.node(item))
        return out

    def check_deadline(self) -> None:
        """Stop the call (EvaluationTimeout, which the FHIRPath evaluators let through) once its deadline has passed."""
        if self.deadline is not None and self.deadline.passed():
            raise EvaluationTimeout("the time allowed for $apply has passed")

    def node(self, resource: Mapping[str, Any]) -> Any:
        key = id(resource)
        if key not in self._nodes:
            self._nodes[key] = self.engine.evaluator.node(resource)
        return self._nodes[key]

    def report(self, severity: str, code: str, message: str, where: str | None = None) -> None:
        self.issues.append(Issue(severity, code, message, where))

    def evaluate(self, compiled: Compiled, scope: Scope, extra: Mapping[str, list] | None = None) -> list:
        """Evaluate, computing each variable only if the expression reaches it; an error is reported and gives an empty result."""
        if self.deadline is not None:
            self.check_deadline()
        try:
            return compiled.expression(ScopeView(scope, extra), self.context)
        except FhirPathEvaluationError as exc:
            self.report("error", "exception", f"{compiled.where}: {exc}", compiled.where)
            return []

    def json(self, value: list) -> list:
        return [self.engine.evaluator.to_json(item) for item in value]


# ---------------------------------------------------------------------------------- the version-neutral tree


@dataclass
class AppliedAction:
    """An applicable action: its RequestGroup fields (R4 names), its generated resource, its children."""

    fields: Json
    resource: Json | None = None
    children: list["AppliedAction"] = field(default_factory=list)


@dataclass
class ApplyResult:
    """What $apply produced, before it is written as an R4 CarePlan or an R5 Bundle."""

    plan: Json
    subject: str
    encounter: str | None
    author: str | None
    now: datetime
    actions: list[AppliedAction]
    issues: list[Issue]
    ignored_resources: int = 0
    language: str | None = None


# ---------------------------------------------------------------------------------- the engine


class Engine:
    """The protocol compiled for applying: load once, apply per request.

    ``timezone``: the local time zone (an IANA name such as ``Australia/Sydney``, or a tzinfo; default UTC) in
    which dates without a time are read; an unknown name is a ValueError (see ``protocol.engine.fhirpath.time_zone``).
    """

    def __init__(self, content: Content, evaluator: Evaluator | None = None, timezone: str | tzinfo | None = "UTC"):
        self.content = content
        self.evaluator = evaluator or default_evaluator()
        self.timezone: tzinfo = time_zone(timezone)
        self._libraries: dict[str, CompiledLibrary] = {}
        self._activities: dict[str, CompiledActivity] = {}
        self.plans: dict[str, CompiledPlan] = {}
        self._value_path = self.evaluator.compile("parameter.value")
        self._entry_path = self.evaluator.compile("parameter")
        for resource in content.of_type("PlanDefinition"):
            self.plans[resource["id"]] = self._compile_plan(resource)
        for resource in content.of_type("ActivityDefinition"):
            self._activity(canonical_of(resource))

    # -- compiling ---------------------------------------------------------------------------------------
    def _compile(self, expression: Mapping[str, Any] | None, where: str) -> Compiled:
        text = (expression or {}).get("expression", "")
        return Compiled(self.evaluator.compile(text), where)

    def _variables(self, element: Json, where: str) -> list[tuple[str, Compiled]]:
        return [(name, self._compile(expr, path)) for name, path, expr in variables_of(element, where)]

    def _library(self, canonical: str) -> CompiledLibrary:
        if canonical not in self._libraries:
            resource = self.content.resolve(canonical, "Library")
            if resource is None:
                raise ApplyError(f"Library {canonical} is not loaded")
            where = f"Library/{resource['id']}"
            self._libraries[canonical] = CompiledLibrary(
                resource=resource,
                data={dr["id"]: dr for dr in resource.get("dataRequirement") or [] if dr.get("id")},
                parameters={p["name"] for p in resource.get("parameter") or [] if p.get("name")},
                variables=self._variables(resource, where),
            )
        return self._libraries[canonical]

    def _activity(self, canonical: str) -> CompiledActivity:
        if canonical not in self._activities:
            resource = self.content.resolve(canonical, "ActivityDefinition")
            if resource is None:
                raise ApplyError(f"ActivityDefinition {canonical} is not loaded")
            where = f"ActivityDefinition/{resource['id']}"
            dynamic = [self._dynamic(dv, resource["kind"], f"{where}.dynamicValue[{i}]") for i, dv in enumerate(resource.get("dynamicValue") or [])]
            compiled = CompiledActivity(resource, dynamic, [self._library(lib) for lib in resource.get("library") or []])
            self._activities[canonical] = compiled
            self._activities[resource["url"]] = compiled
        return self._activities[canonical]

    def _dynamic(self, dynamic_value: Json, target: str | None, where: str) -> DynamicValue:
        path = dynamic_value.get("path", "").lstrip("%")
        value = self._compile(dynamic_value.get("expression"), f"{where}.expression")
        if path.startswith("action."):
            return DynamicValue(path, plan_path("RequestGroupAction", path[len("action."):]), value)
        if target is None:
            return DynamicValue(path, plan_path("RequestGroupAction", path), value)
        if path == target:
            return DynamicValue(path, None, value)
        return DynamicValue(path, plan_path(target, path), value)

    def _compile_plan(self, resource: Json) -> CompiledPlan:
        where = f"PlanDefinition/{resource['id']}"
        return CompiledPlan(
            resource=resource,
            libraries=[self._library(lib) for lib in resource.get("library") or []],
            variables=self._variables(resource, where),
            actions=[self._compile_action(a, f"{where}.action[{i}]") for i, a in enumerate(resource.get("action") or [])],
        )

    def _compile_action(self, action: Json, where: str) -> CompiledAction:
        activity = None
        definition = action.get("definitionCanonical")
        if definition:
            activity = self._activity(definition)
        kind = activity.resource["kind"] if activity else None
        dynamic = [self._dynamic(dv, kind, f"{where}.dynamicValue[{i}]") for i, dv in enumerate(action.get("dynamicValue") or [])]
        first_match = any(e.get("url") == APPLICABILITY_BEHAVIOR and e.get("valueCode") == "any" for e in action.get("extension") or [])
        return CompiledAction(
            source=action,
            where=where,
            conditions=[self._compile(c.get("expression"), f"{where}.condition[{i}]")
                        for i, c in enumerate(action.get("condition") or []) if c.get("kind") == "applicability"],
            variables=self._variables(action, where),
            inputs={dr["id"]: dr for dr in action.get("input") or [] if dr.get("id")},
            activity=activity,
            to_action=[d for d in dynamic if d.path.startswith("action.") or kind is None],
            to_resource=[d for d in dynamic if kind is not None and not d.path.startswith("action.") and d.plan is not None],
            roots=[d.value for d in dynamic if kind is not None and d.plan is None],
            first_match=first_match,
            children=[self._compile_action(c, f"{where}.action[{i}]") for i, c in enumerate(action.get("action") or [])],
        )

    # -- finding artifacts --------------------------------------------------------------------------------
    def plan(self, reference: str) -> CompiledPlan:
        """A PlanDefinition by id or canonical (``url`` or ``url|version``)."""
        if reference in self.plans:
            return self.plans[reference]
        resource = self.content.resolve(reference, "PlanDefinition")
        if resource is None:
            raise ApplyError(f"no PlanDefinition {reference!r} (known: {', '.join(sorted(self.plans))})")
        return self.plans[resource["id"]]

    def activity(self, reference: str) -> CompiledActivity:
        """An ActivityDefinition by id or canonical."""
        resource = self.content.get("ActivityDefinition", reference) or self.content.resolve(reference, "ActivityDefinition")
        if resource is None:
            raise ApplyError(f"no ActivityDefinition {reference!r}")
        return self._activity(canonical_of(resource))

    def plans_for_hook(self, hook: str) -> list[CompiledPlan]:
        """PlanDefinitions with a top-level action triggered by this named event (a CDS Hooks hook)."""
        return [p for p in self.plans.values()
                if any(t.get("type") == "named-event" and t.get("name") == hook
                       for a in p.resource.get("action") or [] for t in a.get("trigger") or [])]

    # -- applying ---------------------------------------------------------------------------------------
    def record(self, data: Any, now: datetime, subject: str, *, timezone: str | tzinfo | None = None,
               max_resources: int | None = None) -> Record:
        """The subject's record indexed once, to be shared by several ``apply`` calls over the same data and clock.

        The calls of one CDS Hooks request (order-sign reviews each draft in a call of its own) read the same data:
        indexing it once per request rather than once per call is the point. Every resource a call's parameters
        name must already be in ``data``. More than ``max_resources`` resources is TooMuchData.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ApplyError("the clock must be timezone-aware")
        if not subject:
            raise ApplyError("a subject is required")
        zone = self.timezone if timezone is None else time_zone(timezone)
        try:
            return Record.from_data(data, self.content.terminology, now.astimezone(zone), subject, max_resources=max_resources)
        except RecordTooLarge as exc:
            raise TooMuchData(exc.count, exc.limit) from None

    def _session(self, data: Any, now: datetime, subject: str, encounter: str | None, practitioner: str | None,
                 parameters: Mapping[str, Any] | None, timezone: str | tzinfo | None = None, max_resources: int | None = None,
                 deadline: Deadline | None = None, record: Record | None = None,
                 organization: str | None = None) -> tuple[Session, Scope, RequestContext]:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ApplyError("the clock must be timezone-aware")
        zone = self.timezone if timezone is None else time_zone(timezone)
        if not subject:
            raise ApplyError("a subject is required")
        if record is None:
            parameter_resources = [v for v in (parameters or {}).values() if v is not None]
            record = self.record([data, parameter_resources], now, subject, timezone=zone, max_resources=max_resources)
        session = Session(self, record, now, parameters, zone, deadline)
        session.check_deadline()
        if record.ignored:
            session.report("information", "informational", _ignored_message(record.ignored))
        for outcome in record.outcomes:
            for issue in outcome.get("issue") or []:
                session.report("warning", "incomplete", f"input OperationOutcome: {issue.get('diagnostics') or issue.get('code')}")
        subject_ref = subject if "/" in subject else f"Patient/{subject}"
        root = Scope(session)
        patient = record.patient(subject_ref)
        root.define_value("subject", [session.node(patient)] if patient else [])
        root.define_value("patient", root.values["subject"])
        encounter_ref = (encounter if "/" in encounter else f"Encounter/{encounter}") if encounter else None
        found = record.get(encounter_ref) if encounter_ref else None
        root.define_value("encounter", [session.node(found)] if found else [])
        practitioner_ref = practitioner if practitioner and "/" in practitioner else (f"Practitioner/{practitioner}" if practitioner else None)
        found = record.get(practitioner_ref) if practitioner_ref else None
        root.define_value("practitioner", [session.node(found)] if found else [])
        organization_ref = (organization if "/" in organization else f"Organization/{organization}") if organization else None
        found = record.get(organization_ref) if organization_ref else None
        root.define_value("organization", [session.node(found)] if found else [])
        for name in ("rootResource", "resource", "context"):
            root.define_value(name, [])
        for name, value in (parameters or {}).items():
            if name not in root.values:
                root.define_value(name, session.parameter_items(value))
        for name in USER_AND_SETTING_INPUTS:
            if name not in root.values:
                root.define_value(name, [])
        context = RequestContext(subject_ref, encounter_ref, practitioner_ref, _instant(now))
        return session, root, context

    def _define_library(self, scope: Scope, library: CompiledLibrary, parameters: Mapping[str, Any] | None) -> None:
        session = scope.session
        session.libraries.add(library.resource["url"])
        for name in library.parameters:
            value = (parameters or {}).get(name)
            items = value if isinstance(value, list) else ([] if value is None else [value])
            scope.define_value(name, session.parameter_items(items))
        for name, requirement in library.data.items():
            scope.define_retrieve(name, requirement)
        for name, compiled in library.variables:
            scope.define_variable(name, compiled)

    def apply(self, plan_reference: str | CompiledPlan, data: Any, now: datetime, subject: str, *, encounter: str | None = None,
              practitioner: str | None = None, organization: str | None = None,
              parameters: Mapping[str, Any] | None = None, timezone: str | tzinfo | None = None,
              max_resources: int | None = None, deadline: Deadline | None = None, record: Record | None = None) -> ApplyResult:
        """PlanDefinition/$apply: the applicable actions of the plan for this subject, data and clock.

        ``plan_reference`` is an id or canonical, or the CompiledPlan itself (no look-up).
        ``timezone`` overrides the engine's local time zone for this call (an IANA name or a tzinfo).
        ``max_resources``: a record of more resources (Bundles flattened, contained resources not counted) is
        refused with TooMuchData; ``deadline``: when it passes, the call stops with ApplyTimeout.
        ``record``: the data already indexed by ``Engine.record`` for this subject, clock and time zone (``data``
        and ``max_resources`` are then not read again).
        """
        plan = plan_reference if isinstance(plan_reference, CompiledPlan) else self.plan(plan_reference)
        try:
            session, root, request = self._session(data, now, subject, encounter, practitioner, parameters, timezone,
                                                   max_resources, deadline, record, organization)
            for library in plan.libraries:
                self._define_library(root, library, parameters)
            root.define_value("context", [session.node(plan.resource)])
            scope = root.child()
            for name, compiled in plan.variables:
                scope.define_variable(name, compiled)
            actions = self._apply_actions(plan.actions, scope, request, False)
        except EvaluationTimeout:
            raise ApplyTimeout() from None
        author = request.practitioner or (f"Organization/{organization}" if organization and "/" not in organization else organization)
        return ApplyResult(plan.resource, request.subject or "", request.encounter, author, now, actions, session.issues,
                           session.record.ignored)

    def apply_activity(self, activity_reference: str, data: Any, now: datetime, subject: str, *, encounter: str | None = None,
                       practitioner: str | None = None, organization: str | None = None, parameters: Mapping[str, Any] | None = None,
                       timezone: str | tzinfo | None = None, max_resources: int | None = None,
                       deadline: Deadline | None = None) -> tuple[Json | None, list[Issue]]:
        """ActivityDefinition/$apply: the request resource of the definition's kind, dynamicValues applied.

        ``timezone``, ``max_resources`` and ``deadline`` as for ``apply``.
        """
        activity = self.activity(activity_reference)
        try:
            session, root, request = self._session(data, now, subject, encounter, practitioner, parameters, timezone,
                                                   max_resources, deadline, organization=organization)
            for library in activity.libraries:
                self._define_library(root, library, parameters)
            resource = self._make_request(activity, root.child(), request, [], [], "ActivityDefinition/$apply")
        except EvaluationTimeout:
            raise ApplyTimeout() from None
        return resource, session.issues

    # -- every input of the operation ------------------------------------------------------------------
    def taken_names(self, artifact: CompiledPlan | CompiledActivity) -> set[str]:
        """The %names an artifact's expressions already use: the standard ones, its libraries' variables and data
        requirements, and (a plan) its own and its actions' variables and inputs. A Library parameter is not taken:
        an input of that name is what binds it."""
        names = set(STANDARD_VARIABLES)
        for library in artifact.libraries:
            names |= {name for name, _ in library.variables} | set(library.data)
        if isinstance(artifact, CompiledPlan):
            names |= {name for name, _ in artifact.variables}
            actions = list(artifact.actions)
            while actions:
                action = actions.pop()
                names |= {name for name, _ in action.variables} | set(action.inputs)
                actions.extend(action.children)
        return names

    def apply_parameters(self, plan_reference: str, inputs: ApplyParameters, now: datetime, **bounds: Any) -> ApplyResult:
        """PlanDefinition/$apply with every input of the operation (see ``protocol.engine.parameters``).

        The record is read from ``data`` or the prefetch Bundles; each entry of ``parameters`` and each user or setting
        input is visible to the expressions as %name (ParameterError when the name is already taken); userLanguage
        gives the output its language. ``bounds``: ``timezone``, ``max_resources``, ``deadline`` as for ``apply``.
        """
        inputs.check_names(self.taken_names(self.plan(plan_reference)))
        result = self.apply(plan_reference, inputs.records(), now, inputs.subject, encounter=inputs.encounter,
                            practitioner=inputs.practitioner, organization=inputs.organization,
                            parameters={**inputs.context_inputs(), **inputs.named_inputs()}, **bounds)
        result.language = inputs.language_code()
        return result

    def apply_activity_parameters(self, activity_reference: str, inputs: ApplyParameters, now: datetime,
                                  **bounds: Any) -> tuple[Json | None, list[Issue]]:
        """ActivityDefinition/$apply with every input of the operation, as ``apply_parameters`` (the request carries no language)."""
        inputs.check_names(self.taken_names(self.activity(activity_reference)))
        return self.apply_activity(activity_reference, inputs.records(), now, inputs.subject, encounter=inputs.encounter,
                                   practitioner=inputs.practitioner, organization=inputs.organization,
                                   parameters={**inputs.context_inputs(), **inputs.named_inputs()}, **bounds)

    # -- actions ----------------------------------------------------------------------------------------
    def _apply_actions(self, actions: Sequence[CompiledAction], scope: Scope, request: RequestContext, first_match: bool) -> list[AppliedAction]:
        applied = []
        for action in actions:
            result = self._apply_action(action, scope, request)
            if result is not None:
                applied.append(result)
                if first_match:
                    break
        return applied

    def _applicable(self, action: CompiledAction, scope: Scope) -> bool:
        """Every applicability condition must give exactly true; evaluation stops at the first that does not."""
        session = scope.session
        for condition in action.conditions:
            result = session.evaluate(condition, scope)
            if len(result) == 1 and session.engine.evaluator.to_json(result[0]) is True:
                continue
            values = session.json(result)
            if values and not (len(values) == 1 and values[0] is False):
                session.report("warning", "invalid", f"{condition.where}: condition gave {values!r}, not a boolean: action not applied", condition.where)
            return False
        return True

    def _apply_action(self, action: CompiledAction, parent: Scope, request: RequestContext) -> AppliedAction | None:
        scope = parent.child()
        for name, requirement in action.inputs.items():
            scope.define_retrieve(name, requirement)
        for name, compiled in action.variables:
            scope.define_variable(name, compiled)
        if not self._applicable(action, scope):
            return None
        source = action.source
        fields: Json = {}
        if source.get("extension"):
            fields["extension"] = source["extension"]
        if source.get("id"):
            fields["id"] = source["id"]
        for name in COPIED:
            if name in source:
                fields[name] = source[name]
        conditions = [c for c in source.get("condition") or [] if c.get("kind") in ("start", "stop")]
        if conditions:
            fields["condition"] = conditions
        for key, value in source.items():
            if key.startswith("timing"):
                fields[key] = value
        applied = AppliedAction(fields)
        applied.children = self._apply_actions(action.children, scope, request, action.first_match)
        if action.activity is not None:
            applied.resource = self._make_request(action.activity, scope, request, action.roots, action.to_resource, action.where)
        for dynamic in action.to_action:
            self._set(fields, dynamic, scope, action.where)
        return applied

    def _make_request(self, activity: CompiledActivity, scope: Scope, request: RequestContext, roots: list[Compiled],
                      extra: list[DynamicValue], where: str) -> Json | None:
        """ActivityDefinition/$apply: start from a resource named by a root dynamicValue, or build a new request."""
        session = scope.session
        definition = activity.resource
        extra_env = {"context": [session.node(definition)]}
        missing = [lib for lib in activity.libraries if lib.resource["url"] not in session.libraries]
        if missing:
            scope = scope.child()
            for library in missing:
                self._define_library(scope, library, session.parameters)
        base = None
        for compiled in [d.value for d in activity.dynamic if d.plan is None] + roots:
            found = session.json(session.evaluate(compiled, scope, extra_env))
            if found and isinstance(found[0], dict) and found[0].get("resourceType") == definition["kind"]:
                base = copy_json(found[0])
                break
        if base is None and roots:
            session.report("warning", "not-found", f"{where}: the resource to change was not found: action has no resource", where)
            return None
        if base is None:
            try:
                base = new_request(definition, request)
            except UnsupportedKind as exc:
                session.report("error", "not-supported", f"{where}: {exc}", where)
                return None
        for dynamic in [d for d in activity.dynamic if d.plan is not None] + extra:
            env = dict(extra_env)
            env["resource"] = [session.node(base)]
            self._set(base, dynamic, scope, where, env)
        drop_unreferenced_contained(base)
        return base

    def _set(self, target: Json, dynamic: DynamicValue, scope: Scope, where: str, env: Mapping[str, list] | None = None) -> None:
        session = scope.session
        raw = session.evaluate(dynamic.value, scope, env)
        if not raw:
            return
        head = dynamic.plan.steps[0].name
        if head in target and isinstance(target[head], (dict, list)):
            target[head] = copy_json(target[head])
        try:
            dynamic.plan.set(target, session.json(raw), [self.evaluator.type_name(item) for item in raw])
        except PathError as exc:
            session.report("error", "processing", f"{where}: dynamicValue {dynamic.path}: {exc}", where)


def _ignored_message(count: int) -> str:
    """The result's note on other patients' resources left out: a count, never an id."""
    if count == 1:
        return "1 resource of another patient was ignored"
    return f"{count} resources of other patients were ignored"


def _instant(now: datetime) -> str:
    """A FHIR dateTime with seconds and offset."""
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def new_id() -> str:
    """A fresh id for a generated CarePlan or Bundle."""
    return str(uuid.uuid4())


__all__ = ["Engine", "ApplyError", "ApplyResult", "ApplyTimeout", "AppliedAction", "Deadline", "Issue", "TooMuchData", "canonical_of",
           "new_id", "STANDARD_VARIABLES"]
