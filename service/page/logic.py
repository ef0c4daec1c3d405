"""Reading the protocol's artifacts for the protocol page: no HTML here.

The page explains the protocol from its FHIR artifacts alone. This module finds what the page needs in them: the
phases of the pathway and their time windows, the card each action belongs to, the rules that suspend the
protocol (a card whose finding every other card of its PlanDefinition needs to be empty, such as the red flags),
the safety rules (the codes of the protocol's CodeSystem that carry a definition and code at least one action),
the findings an expression reads and the ValueSets behind them. Expressions are read as text (top-level ``and``
chains, ``%x.exists()`` and ``%x.empty()`` operands, string concatenations), never evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from protocol.engine.content import Content
from service.cds_hooks.cards import INDICATORS

Json = dict[str, Any]

EXT_VARIABLE = "http://hl7.org/fhir/StructureDefinition/variable"

#: Hours in one UCUM time unit (for the phase windows and date filters).
UNIT_HOURS = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0, "wk": 168.0, "mo": 730.5, "a": 8766.0}


# -- elements ---------------------------------------------------------------------------------------------------

def walk(actions: Iterable[Json] | None) -> Iterator[Json]:
    """Every action, depth first, parents before children."""
    for action in actions or []:
        if isinstance(action, dict):
            yield action
            yield from walk(action.get("action") or [])


def children(action: Json) -> list[Json]:
    """The sub-actions of an action that are objects."""
    return [child for child in action.get("action") or [] if isinstance(child, dict)]


def extension(element: Json, url: str) -> Json | None:
    """The first extension with this URL (a URL starting with ``/`` matches as a suffix)."""
    for ext in element.get("extension") or []:
        if isinstance(ext, dict) and (ext.get("url") == url or (url.startswith("/") and str(ext.get("url", "")).endswith(url))):
            return ext
    return None


def concept_label(ext: Json | None) -> str | None:
    """The display (else code, else text) of an extension's valueCodeableConcept."""
    concept = (ext or {}).get("valueCodeableConcept") or {}
    for coding in concept.get("coding") or []:
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding.get("code"))
    return concept.get("text")


def concept_code(ext: Json | None) -> str | None:
    """The first code of an extension's valueCodeableConcept."""
    for coding in ((ext or {}).get("valueCodeableConcept") or {}).get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return None


def codings(concepts: Any) -> list[Json]:
    """Every coding of a CodeableConcept or a list of them."""
    if isinstance(concepts, dict):
        concepts = [concepts]
    return [c for concept in concepts or [] if isinstance(concept, dict) for c in concept.get("coding") or [] if isinstance(c, dict)]


def hours(quantity: Json | None) -> float | None:
    """A UCUM time quantity in hours, else None."""
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), (int, float)):
        return None
    factor = UNIT_HOURS.get(str(quantity.get("code") or quantity.get("unit") or "h"))
    return None if factor is None else float(quantity["value"]) * factor


def duration_label(value: float) -> str:
    """48 -> '48 h', 72 -> '72 h', 168 -> '7 days', 0.5 -> '30 min' (whole days from a week on)."""
    if 0 < value < 1:
        return f"{value * 60:g} min"
    if value >= 168 and value % 24 == 0:
        days = int(value // 24)
        return f"{days} day" if days == 1 else f"{days} days"
    return f"{value:g} h"


def window_label(low: float, high: float | None) -> str:
    """A phase window in words: lower bound included, upper bound excluded."""
    if high is None:
        return f"{duration_label(low)} or more after onset"
    start = "onset" if low == 0 else duration_label(low)
    return f"from {start} up to (not including) {duration_label(high)}"


def natural_key(code: str) -> list[Any]:
    """Sort key that puts S2 before S10: text and numbers alternate, numbers compared as numbers."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", code))]


# -- expressions as text ------------------------------------------------------------------------------------------

LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'", re.S)
VARIABLE_REF = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_EMPTY_TEST = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*(?:empty\(\s*\)|exists\(\s*\)\s*\.\s*not\(\s*\))")
_EXISTS_TEST = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*exists\(\s*\)")
_BARE_VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_MEMBER_OF = re.compile(r"memberOf\(\s*'([^']+)'\s*\)")


def fhirpath_literal(expression: str) -> str | None:
    """The text of an expression that is one FHIRPath string literal, else None."""
    match = LITERAL.fullmatch(expression.strip())
    if not match:
        return None
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1).startswith("u") and len(m.group(1)) == 5
                  else _ESCAPES.get(m.group(1), m.group(1)), match.group(1))


def _scan(expression: str) -> tuple[list[bool], int, int]:
    """One walk over an expression: for each character whether it stands outside strings and brackets (and is not
    itself a bracket or quote), the bracket depth at the end, and the lowest depth reached."""
    flags, depth, lowest, quote, i = [False] * len(expression), 0, 0, None, 0
    while i < len(expression):
        ch = expression[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            lowest = min(lowest, depth)
        elif depth == 0:
            flags[i] = True
        i += 1
    return flags, depth, lowest


def _balanced(expression: str) -> bool:
    """Every bracket closes, and none closes before it opens."""
    _, depth, lowest = _scan(expression)
    return depth == 0 and lowest >= 0


def strip_parentheses(expression: str) -> str:
    """``(a and b)`` -> ``a and b`` when the outer brackets enclose the whole expression."""
    expression = expression.strip()
    while expression.startswith("(") and expression.endswith(")") and _balanced(expression[1:-1]):
        expression = expression[1:-1].strip()
    return expression


def split_top_level(expression: str, separator: str) -> list[str]:
    """The operands of ``expression`` split where ``separator`` (a regular expression) stands outside strings and brackets."""
    flags = _scan(expression)[0]
    parts, start = [], 0
    for match in re.finditer(separator, expression):
        if match.start() >= start and all(flags[match.start():match.end()]):
            parts.append(expression[start:match.start()].strip())
            start = match.end()
    parts.append(expression[start:].strip())
    return parts


def split_concatenation(expression: str) -> list[str]:
    """The operands of a top-level ``+`` chain (outside strings and brackets)."""
    return split_top_level(expression, r"\+")


def conjuncts(expression: str) -> list[str]:
    """The operands of a top-level ``and`` chain, each without enclosing brackets."""
    return [strip_parentheses(part) for part in split_top_level(strip_parentheses(expression), r"\band\b")]


def iif_condition(expression: str) -> str:
    """The condition of an ``iif(condition, a, b)`` expression, else the expression itself."""
    text = expression.strip()
    if text.startswith("iif(") and text.endswith(")"):
        arguments = split_top_level(text[4:-1], ",")
        if len(arguments) >= 2:
            return arguments[0]
    return expression


def condition_expressions(action: Json) -> list[str]:
    """The applicability expressions of an action (all must hold for it to be given)."""
    out = []
    for condition in action.get("condition") or []:
        expression = (condition.get("expression") or {}).get("expression") if isinstance(condition, dict) else None
        if isinstance(expression, str) and condition.get("kind", "applicability") == "applicability":
            out.append(expression)
    return out


#: The hook of the pathway: a plan triggered when the chart is opened is the protocol's pathway, the page's main part;
#: the plans triggered by other hooks (the order hooks) review what is being ordered.
CHART_HOOK = "patient-view"


def plan_triggers(plan: Json) -> list[str]:
    """The named events that trigger a plan's top-level actions, each once."""
    return list(dict.fromkeys(h for a in plan.get("action") or [] if isinstance(a, dict) for h in hooks_of(a)))


def hooks_of(action: Json) -> list[str]:
    """The names of the hooks (named-event triggers) of an action."""
    return [str(t["name"]) for t in action.get("trigger") or [] if isinstance(t, dict) and t.get("name")]


def indicator_of(action: Json) -> str:
    """The CDS Hooks indicator of a card from its action's priority."""
    return INDICATORS.get(str(action.get("priority")), "info")


# -- the protocol as a whole ------------------------------------------------------------------------------------------

@dataclass
class Phase:
    """One phase of the pathway: its action and its window in hours since onset (``high`` None: open-ended)."""
    action: Json
    low: float
    high: float | None


@dataclass
class Suspension:
    """A rule that suspends the protocol: while ``finding`` exists, every other card of ``plan`` is held back."""
    plan: Json
    card: Json               #: the top-level action of ``plan`` that is given instead
    finding: str             #: the Library finding whose existence suspends the protocol
    coding: Json             #: the rule's code (system and code), empty when the card has none
    concept: Json            #: the CodeSystem concept of the code (display, definition), else empty
    actions: list[Json]      #: every action of every PlanDefinition that carries the code (or just ``card``)

    @property
    def anchor(self) -> str:
        """The page anchor of the rule."""
        return f"rule-{self.coding.get('code') or self.card.get('id')}"

    @property
    def label(self) -> str:
        """The rule's name: its concept's display, else the card's title."""
        return str(self.concept.get("display") or self.coding.get("display") or self.card.get("title") or self.card.get("id"))


@dataclass
class Raise:
    """A card's priority raised by a dynamicValue: to ``indicator`` when ``condition`` holds."""
    indicator: str
    condition: str
    parts: list[Json] = field(default_factory=list)  #: the card's sub-actions whose findings the condition reads


class ProtocolReading:
    """What the page needs from one Content: plans, phases, cards, findings, rules and suspensions."""

    def __init__(self, content: Content):
        self.content = content
        self.publication: Json = content.publication or {}
        self.plans: list[Json] = content.of_type("PlanDefinition")
        self.pathway: Json | None = next((p for p in self.plans if CHART_HOOK in plan_triggers(p)), None)
        self.others = [p for p in self.plans if p is not self.pathway]
        self.library: Json | None = next(iter(content.of_type("Library")), None)
        self.variables = self._variables()
        self.concepts: dict[tuple[Any, Any], Json] = {(cs.get("url"), c.get("code")): c for cs in content.of_type("CodeSystem")
                                                      for c in concepts_of(cs.get("concept"))}
        self.card_of: dict[str, Json] = {}      # action id -> the top-level action (the card) it belongs to
        self.plan_of: dict[str, Json] = {}      # action id -> its PlanDefinition
        for plan in self.plans:
            for top in plan.get("action") or []:
                for action in walk([top]):
                    if action.get("id"):
                        self.card_of.setdefault(action["id"], top)
                        self.plan_of.setdefault(action["id"], plan)
        self.requirement_valuesets: dict[str, list[str]] = {
            str(dr["id"]): [str(cf["valueSet"]) for cf in dr.get("codeFilter") or [] if isinstance(cf, dict) and cf.get("valueSet")]
            for dr in (self.library or {}).get("dataRequirement") or [] if isinstance(dr, dict) and dr.get("id")}
        self.suspensions = self._suspensions()

    def _variables(self) -> dict[str, Json]:
        """The Library's named findings (``variable`` extensions) by name."""
        found: dict[str, Json] = {}
        for ext in (self.library or {}).get("extension") or []:
            value = ext.get("valueExpression") if isinstance(ext, dict) and ext.get("url") == EXT_VARIABLE else None
            if isinstance(value, dict) and value.get("name"):
                found.setdefault(str(value["name"]), value)
        return found

    @staticmethod
    def phase_group(plan: Json | None) -> Json | None:
        """The top-level action whose sub-actions carry time windows (the phases), else None."""
        for action in (plan or {}).get("action") or []:
            if isinstance(action, dict) and any(c.get("timingRange") for c in children(action)):
                return action
        return None

    def phases(self) -> list[Phase]:
        """The phases of the pathway in their order, with their windows in hours."""
        out = []
        for child in children(self.phase_group(self.pathway) or {}):
            timing = child.get("timingRange")
            if isinstance(timing, dict):
                out.append(Phase(child, hours(timing.get("low")) or 0.0, hours(timing.get("high"))))
        return out

    @staticmethod
    def rule_codes(action: Json) -> list[Json]:
        """The codings of an action's ``code``."""
        return [c for c in codings(action.get("code")) if c.get("code")]

    def concept_of(self, coding: Json) -> Json:
        """The CodeSystem concept of a coding, else an empty dict."""
        return self.concepts.get((coding.get("system"), coding.get("code")), {})

    def is_rule(self, coding: Json) -> bool:
        """A code names a rule when its concept carries a definition (recommendations and phases have a display only)."""
        return bool(self.concept_of(coding).get("definition"))

    def is_rule_card(self, action: Json) -> bool:
        """An action coded with a rule that does not suspend the protocol."""
        suspending = {(s.coding.get("system"), s.coding.get("code")) for s in self.suspensions}
        return any(self.is_rule(c) and (c.get("system"), c.get("code")) not in suspending for c in self.rule_codes(action))

    def rules(self) -> list[tuple[Json, Json, list[Json]]]:
        """(coding, concept, actions) of every rule that codes an action, other than the suspending ones, in code order."""
        suspending = {(s.coding.get("system"), s.coding.get("code")) for s in self.suspensions}
        found: dict[tuple[Any, Any], list[Json]] = {}
        for plan in self.plans:
            for action in walk(plan.get("action") or []):
                for coding in self.rule_codes(action):
                    key = (coding.get("system"), coding.get("code"))
                    if self.is_rule(coding) and key not in suspending:
                        found.setdefault(key, []).append(action)
        ordered = sorted(found, key=lambda key: natural_key(str(key[1])))
        return [({"system": key[0], "code": key[1]}, self.concepts[key], found[key]) for key in ordered]

    def same_code(self, action: Json, coding: Json) -> bool:
        """Whether an action carries this code."""
        return any(c.get("system") == coding.get("system") and c.get("code") == coding.get("code") for c in self.rule_codes(action))

    # findings --------------------------------------------------------------------------------------------------------
    def required_empty(self, expression: str, seen: frozenset[str] = frozenset()) -> set[str]:
        """Findings that must be empty for ``expression`` to hold: ``%x.empty()`` operands of its top-level ``and``
        chain, and of the chains of the boolean findings it names as operands (``%planApplies``)."""
        found: set[str] = set()
        for operand in conjuncts(expression):
            match = _EMPTY_TEST.fullmatch(operand)
            if match:
                found.add(match.group(1))
                continue
            bare = _BARE_VARIABLE.fullmatch(operand)
            name = bare.group(1) if bare else None
            if name in self.variables and name not in seen:
                found |= self.required_empty(str(self.variables[name].get("expression") or ""), seen | {name})
        return found

    @staticmethod
    def required_present(action: Json) -> list[str]:
        """Findings an action's own conditions test with ``%x.exists()`` (as a whole operand of an ``and`` chain)."""
        names: list[str] = []
        for expression in condition_expressions(action):
            for operand in conjuncts(expression):
                match = _EXISTS_TEST.fullmatch(operand)
                if match and match.group(1) not in names:
                    names.append(match.group(1))
        return names

    def held_back_by(self, action: Json) -> set[str]:
        """Findings whose existence keeps this action from being given."""
        return {name for expression in condition_expressions(action) for name in self.required_empty(expression)}

    def references(self, expression: str, seen: set[str] | None = None) -> set[str]:
        """Every finding an expression names, directly or through the findings it names."""
        seen = set() if seen is None else seen
        for name in VARIABLE_REF.findall(expression):
            if name not in seen:
                seen.add(name)
                if name in self.variables:
                    self.references(str(self.variables[name].get("expression") or ""), seen)
        return seen

    def finding_valuesets(self, name: str) -> list[str]:
        """The ValueSets a finding reads itself: its ``memberOf`` tests and the data requirements it names."""
        expression = str((self.variables.get(name) or {}).get("expression") or "")
        found = list(_MEMBER_OF.findall(expression))
        for ref in VARIABLE_REF.findall(expression):
            found += self.requirement_valuesets.get(ref, [])
        return list(dict.fromkeys(found))

    def tested_findings(self, actions: Iterable[Json]) -> list[str]:
        """The Library findings some actions test for presence, each once."""
        return list(dict.fromkeys(n for a in actions for n in self.required_present(a) if n in self.variables))

    # cards -------------------------------------------------------------------------------------------------------------
    def _suspensions(self) -> list[Suspension]:
        """Top-level actions given when a finding exists that every other top-level action of their plan needs empty."""
        out: list[Suspension] = []
        for plan in self.plans:
            tops = [a for a in plan.get("action") or [] if isinstance(a, dict)]
            for card in tops:
                others = [t for t in tops if t is not card]
                for finding in self.required_present(card):
                    if not others or not all(finding in self.held_back_by(t) for t in others):
                        continue
                    found = self.rule_codes(card)
                    coding = found[0] if found else {}
                    plans = [plan] + [p for p in self.plans if p is not plan]  # the suspended plan's cards first
                    actions = [a for p in plans for a in walk(p.get("action") or []) if coding and self.same_code(a, coding)] or [card]
                    if not any(s.coding and s.coding == coding for s in out):
                        out.append(Suspension(plan, card, finding, coding, self.concept_of(coding) if coding else {}, actions))
                    break
        return out

    def plan_variants(self) -> list[Json]:
        """Other top-level actions of the pathway that carry the plan card's code (such as the plan already in place)."""
        group = self.phase_group(self.pathway)
        if group is None:
            return []
        codes = {(c.get("system"), c.get("code")) for c in self.rule_codes(group)}
        return [a for a in (self.pathway or {}).get("action") or [] if isinstance(a, dict) and a is not group
                and any((c.get("system"), c.get("code")) in codes for c in self.rule_codes(a))]

    def shown_elsewhere(self) -> set[int]:
        """Top-level actions the page shows outside the plain list of their plan's cards (suspensions, plan variants)."""
        moved = {id(a) for s in self.suspensions for a in s.actions if self.card_of.get(a.get("id", "")) is a}
        return moved | {id(a) for a in self.plan_variants()} | {id(self.phase_group(self.pathway))}

    def raises(self, card: Json) -> list[Raise]:
        """Each priority a card's dynamicValue can raise it to, with its condition and the card's parts that condition reads."""
        out = []
        for dv in card.get("dynamicValue") or []:
            if not isinstance(dv, dict) or dv.get("path") not in ("action.priority", "priority"):
                continue
            expression = str((dv.get("expression") or {}).get("expression") or "")
            literals = [fhirpath_literal(f"'{m}'") for m in LITERAL.findall(expression)]
            indicators = list(dict.fromkeys(INDICATORS[p] for p in literals if p in INDICATORS))
            condition = iif_condition(expression)
            read = self.references(condition)
            parts = [a for a in walk(children(card))
                     if {n for e in condition_expressions(a) for n in VARIABLE_REF.findall(e)} & read]
            out += [Raise(indicator, condition, parts) for indicator in indicators]
        return out

    def raised_by(self, card: Json, action: Json) -> list[str]:
        """The indicators a card is raised to because of this part of it (the whole card: every raise)."""
        return [r.indicator for r in self.raises(card) if action is card or any(p is action for p in r.parts)]

    def resolve(self, canonical: str | None, resource_type: str | None = None) -> Json | None:
        """The loaded artifact with this canonical, else None."""
        return self.content.resolve(canonical, resource_type) if canonical else None


def concepts_of(concepts: Any) -> Iterator[Json]:
    """Every concept of a CodeSystem's concept tree, parents first."""
    for concept in concepts or []:
        if isinstance(concept, dict):
            yield concept
            yield from concepts_of(concept.get("concept"))
