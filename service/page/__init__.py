"""The protocol page: ``GET /`` and ``GET /protocol``, generated from the loaded artifacts.

Everything the page says about the protocol is read from :class:`protocol.content.Content` -- the
PlanDefinitions (phases, recommendations, cards), the ActivityDefinitions they propose, the Library (named
findings, data requirements), the ValueSets and CodeSystems and ``publication.json``. Only headings and
labels are written here, so a change to an artifact shows up on the page at the next start.

Every action of every PlanDefinition has an HTML anchor equal to its id, because the CDS Hooks cards link to
``{base}/protocol#<action id>``. A rule that suspends the protocol (a card whose finding every other card of its
PlanDefinition requires to be empty, such as the red flags) is found by reading the applicability conditions
and the Library's findings, and is shown first, with the ValueSet its finding reads, its evidence and its cards.
The page is public documentation: this blueprint has no authentication hook (the CDS Hooks and FHIR blueprints
authenticate their own requests).

The page is rendered once, when the blueprint is registered on an application, and served from memory with
an ETag. Links to artifacts are relative (``protocol/artifacts/Type-id.json`` and ``fhir/Type/id``), so they
resolve the same from ``/`` and ``/protocol`` and keep working behind a proxy that adds a path prefix.
``GET /protocol/artifacts/{Type}-{id}.json`` serves each artifact's JSON without authentication; the
``fhir/`` link goes to the FHIR API, which may ask for a token.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState

from protocol.content import TYPE_ORDER, Content
from service.cards import EXT_DIRECTION, EXT_QUALITY, EXT_RATIONALE, EXT_STRENGTH, INDICATORS, OVERRIDE_SUFFIX
from service.errors import NotFound

Json = dict[str, Any]

bp = Blueprint("protocol_page", __name__)

PAGE_KEY = "back_spasm_cds.protocol_page"
FHIR_JSON = "application/fhir+json"
EXT_VARIABLE = "http://hl7.org/fhir/StructureDefinition/variable"
RULE_CODE = re.compile(r"S\d+")
CODES_SHOWN = 60  #: larger ValueSets are summarised; their codes are in the JSON

#: Short names of the external code systems the artifacts use (labels only; anything else shows its URL).
SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://loinc.org": "LOINC",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS",
    "http://unitsofmeasure.org": "UCUM",
    "http://terminology.hl7.org/CodeSystem/condition-clinical": "condition clinical status",
    "http://terminology.hl7.org/CodeSystem/condition-ver-status": "condition verification status",
}

#: Hours in one UCUM time unit (for the phase windows).
UNIT_HOURS = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0, "wk": 168.0, "mo": 730.5, "a": 8766.0}

#: Security headers of the HTML answer: the page loads nothing from anywhere (inline CSS only).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def esc(value: Any) -> str:
    """Text made safe for HTML content and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


# -- reading the artifacts ------------------------------------------------------------------------------------

def walk(actions: Iterable[Json]) -> Iterator[Json]:
    """Every action, depth first, parents before children."""
    for action in actions or []:
        if isinstance(action, dict):
            yield action
            yield from walk(action.get("action") or [])


def _extension(element: Json, url: str) -> Json | None:
    for ext in element.get("extension") or []:
        if isinstance(ext, dict) and (ext.get("url") == url or (url.startswith("/") and str(ext.get("url", "")).endswith(url))):
            return ext
    return None


def _concept_label(ext: Json | None) -> str | None:
    """The display (else code, else text) of an extension's valueCodeableConcept."""
    concept = (ext or {}).get("valueCodeableConcept") or {}
    for coding in concept.get("coding") or []:
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding.get("code"))
    return concept.get("text")


def _concept_code(ext: Json | None) -> str | None:
    for coding in ((ext or {}).get("valueCodeableConcept") or {}).get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return None


def _codings(concepts: Any) -> list[Json]:
    if isinstance(concepts, dict):
        concepts = [concepts]
    return [c for concept in concepts or [] if isinstance(concept, dict) for c in concept.get("coding") or [] if isinstance(c, dict)]


def _hours(quantity: Json | None) -> float | None:
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), (int, float)):
        return None
    factor = UNIT_HOURS.get(str(quantity.get("code") or quantity.get("unit") or "h"))
    return None if factor is None else float(quantity["value"]) * factor


def duration_label(hours: float) -> str:
    """48 -> '48 h', 72 -> '72 h', 168 -> '7 days', 0.5 -> '30 min' (whole days from a week on)."""
    if hours < 1 and hours > 0:
        return f"{hours * 60:g} min"
    if hours >= 168 and hours % 24 == 0:
        days = int(hours // 24)
        return f"{days} day" if days == 1 else f"{days} days"
    return f"{hours:g} h"


def window_label(low: float, high: float | None) -> str:
    """The phase window in words: lower bound included, upper bound excluded."""
    if high is None:
        return f"{duration_label(low)} or more after onset"
    start = "onset" if low == 0 else duration_label(low)
    return f"from {start} up to (not including) {duration_label(high)}"


_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'", re.S)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_VARIABLE_REF = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")


def fhirpath_literal(expression: str) -> str | None:
    """The text of an expression that is one FHIRPath string literal, else None."""
    match = _LITERAL.fullmatch(expression.strip())
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


def split_concatenation(expression: str) -> list[str]:
    """The operands of a top-level ``+`` chain (outside strings and brackets)."""
    return split_top_level(expression, r"\+")


def _strip_parentheses(expression: str) -> str:
    """``(a and b)`` -> ``a and b`` when the outer brackets enclose the whole expression."""
    expression = expression.strip()
    while expression.startswith("(") and expression.endswith(")") and _balanced(expression[1:-1]):
        expression = expression[1:-1].strip()
    return expression


def _balanced(expression: str) -> bool:
    """Every bracket closes, and none closes before it opens."""
    _, depth, lowest = _scan(expression)
    return depth == 0 and lowest >= 0


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


def conjuncts(expression: str) -> list[str]:
    """The operands of a top-level ``and`` chain, each without enclosing brackets."""
    return [_strip_parentheses(part) for part in split_top_level(_strip_parentheses(expression), r"\band\b")]


_EMPTY_TEST = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*(?:empty\(\s*\)|exists\(\s*\)\s*\.\s*not\(\s*\))")
_EXISTS_TEST = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*exists\(\s*\)")
_BARE_VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_MEMBER_OF = re.compile(r"memberOf\(\s*'([^']+)'\s*\)")


_INLINE_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+")


def inline_markdown(text: str) -> str:
    """Escaped text with `code` and **strong** spans."""
    escaped = esc(text)
    escaped = _INLINE_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", escaped)
    return _STRONG.sub(lambda m: f"<strong>{m.group(1)}</strong>", escaped)


def markdown(text: Any, css: str = "") -> str:
    """A small, safe subset of markdown: paragraphs, bullet lists, `code` and **strong** (everything escaped first)."""
    cls = f' class="{css}"' if css else ""
    out = []
    for block in re.split(r"\n\s*\n", str(text or "")):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        items: list[str] = []
        lead: list[str] = []
        for line in lines:
            if _BULLET.match(line):
                items.append(_BULLET.sub("", line, count=1))
            elif items:
                items[-1] += " " + line.strip()
            else:
                lead.append(line.strip())
        if lead:
            out.append(f"<p{cls}>{inline_markdown(' '.join(lead))}</p>")
        if items:
            out.append(f"<ul{cls}>" + "".join(f"<li>{inline_markdown(i.strip())}</li>" for i in items) + "</ul>")
    return "".join(out)


@dataclass
class Phase:
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
        return f"rule-{self.coding.get('code') or self.card.get('id')}"

    @property
    def label(self) -> str:
        return str(self.concept.get("display") or self.coding.get("display") or self.card.get("title") or self.card.get("id"))


# -- rendering ------------------------------------------------------------------------------------------------

class PageRenderer:
    """Builds the HTML of the protocol page from one Content."""

    def __init__(self, content: Content):
        self.content = content
        self.publication = content.publication or {}
        self.plans = content.of_type("PlanDefinition")
        self.pathway = next((p for p in self.plans if self._phase_group(p) is not None), self.plans[0] if self.plans else None)
        self.others = [p for p in self.plans if p is not self.pathway]
        self.library = next(iter(content.of_type("Library")), None)
        self.variables = self._variables()
        self.concepts = {(cs.get("url"), c.get("code")): c for cs in content.of_type("CodeSystem")
                         for c in self._concepts(cs.get("concept"))}
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
        self.moved = {id(s_action) for s in self.suspensions for s_action in s.actions if self.card_of.get(s_action.get("id", "")) is s_action}
        self.moved |= {id(a) for a in self.plan_variants()}

    # helpers ------------------------------------------------------------------------------------------------
    def _concepts(self, concepts: Any) -> Iterator[Json]:
        for concept in concepts or []:
            if isinstance(concept, dict):
                yield concept
                yield from self._concepts(concept.get("concept"))

    def _variables(self) -> dict[str, Json]:
        found: dict[str, Json] = {}
        for ext in (self.library or {}).get("extension") or []:
            value = ext.get("valueExpression") if isinstance(ext, dict) and ext.get("url") == EXT_VARIABLE else None
            if isinstance(value, dict) and value.get("name"):
                found.setdefault(str(value["name"]), value)
        return found

    @staticmethod
    def _phase_group(plan: Json) -> Json | None:
        for action in plan.get("action") or []:
            if any(isinstance(c, dict) and c.get("timingRange") for c in action.get("action") or []):
                return action
        return None

    # reading the logic ------------------------------------------------------------------------------------------
    @staticmethod
    def condition_expressions(action: Json) -> list[str]:
        """The applicability expressions of an action (all must hold for it to be given)."""
        out = []
        for condition in action.get("condition") or []:
            expression = (condition.get("expression") or {}).get("expression") if isinstance(condition, dict) else None
            if isinstance(expression, str) and condition.get("kind", "applicability") == "applicability":
                out.append(expression)
        return out

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

    def required_present(self, action: Json) -> list[str]:
        """Findings an action's own conditions test with ``%x.exists()`` (as a whole operand of an ``and`` chain)."""
        names: list[str] = []
        for expression in self.condition_expressions(action):
            for operand in conjuncts(expression):
                match = _EXISTS_TEST.fullmatch(operand)
                if match and match.group(1) not in names:
                    names.append(match.group(1))
        return names

    def held_back_by(self, action: Json) -> set[str]:
        """Findings whose existence keeps this action from being given."""
        return {name for expression in self.condition_expressions(action) for name in self.required_empty(expression)}

    def references(self, expression: str, seen: set[str] | None = None) -> set[str]:
        """Every finding an expression names, directly or through the findings it names."""
        seen = set() if seen is None else seen
        for name in _VARIABLE_REF.findall(expression):
            if name not in seen:
                seen.add(name)
                if name in self.variables:
                    self.references(str(self.variables[name].get("expression") or ""), seen)
        return seen

    def finding_valuesets(self, name: str) -> list[str]:
        """The ValueSets a finding reads itself: its ``memberOf`` tests and the data requirements it names."""
        expression = str((self.variables.get(name) or {}).get("expression") or "")
        found = list(_MEMBER_OF.findall(expression))
        for ref in _VARIABLE_REF.findall(expression):
            found += self.requirement_valuesets.get(ref, [])
        return list(dict.fromkeys(found))

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
                    codings = self.rule_codes(card)
                    coding = codings[0] if codings else {}
                    concept = self.concepts.get((coding.get("system"), coding.get("code")), {}) if coding else {}
                    plans = [plan] + [p for p in self.plans if p is not plan]  # the suspended plan's cards first
                    actions = [a for p in plans for a in walk(p.get("action") or [])
                               if coding and any(c.get("system") == coding.get("system") and c.get("code") == coding.get("code")
                                                 for c in self.rule_codes(a))] or [card]
                    if not any(s.coding and s.coding == coding for s in out):
                        out.append(Suspension(plan, card, finding, coding, concept, actions))
                    break
        return out

    def plan_variants(self) -> list[Json]:
        """Other top-level actions of the pathway that carry the plan card's code (the plan already in place)."""
        group = self._phase_group(self.pathway) if self.pathway else None
        if group is None:
            return []
        codes = {(c.get("system"), c.get("code")) for c in self.rule_codes(group)}
        return [a for a in (self.pathway or {}).get("action") or [] if isinstance(a, dict) and a is not group
                and any((c.get("system"), c.get("code")) in codes for c in self.rule_codes(a))]

    def raised_priority(self, card: Json, action: Json | None = None) -> list[tuple[str, str]]:
        """(indicator, condition HTML) for each priority a card's dynamicValue can raise it to. With ``action`` (a part
        of the card), only when the condition depends on a finding the action's own conditions name."""
        out = []
        for dv in card.get("dynamicValue") or []:
            if not isinstance(dv, dict) or dv.get("path") not in ("action.priority", "priority"):
                continue
            expression = str((dv.get("expression") or {}).get("expression") or "")
            literals = [fhirpath_literal(f"'{m}'") for m in _LITERAL.findall(expression)]
            indicators = list(dict.fromkeys(INDICATORS[p] for p in literals if p in INDICATORS))
            if not indicators:
                continue
            arguments = split_top_level(expression.strip()[4:-1], ",") if expression.strip().startswith("iif(") and expression.strip().endswith(")") else []
            condition = arguments[0] if len(arguments) >= 2 else expression
            if action is not None and action is not card:
                own = {n for e in self.condition_expressions(action) for n in _VARIABLE_REF.findall(e)}
                if not own & self.references(condition):
                    continue
            for indicator in indicators:
                out.append((indicator, f'<code class="fhirpath">{self.fhirpath(condition)}</code>'))
        return out

    def phases(self) -> list[Phase]:
        group = self._phase_group(self.pathway) if self.pathway else None
        out = []
        for child in (group or {}).get("action") or []:
            timing = child.get("timingRange") if isinstance(child, dict) else None
            if isinstance(timing, dict):
                low = _hours(timing.get("low")) or 0.0
                out.append(Phase(child, low, _hours(timing.get("high"))))
        return out

    def artifact_json(self, resource: Json) -> str:
        return f"protocol/artifacts/{resource['resourceType']}-{resource.get('id', '')}.json"

    @staticmethod
    def artifact_fhir(resource: Json) -> str:
        return f"fhir/{resource['resourceType']}/{resource.get('id', '')}"

    @staticmethod
    def artifact_anchor(resource: Json) -> str:
        return f"{resource['resourceType']}-{resource.get('id', '')}"

    def link_resource(self, canonical: str | None, resource_type: str | None = None) -> str:
        """A link to the page's entry for a canonical, or the canonical as text."""
        resource = self.content.resolve(canonical, resource_type) if canonical else None
        if resource is None:
            return f"<code>{esc(canonical)}</code>"
        return f'<a href="#{esc(self.artifact_anchor(resource))}">{esc(resource.get("title") or resource.get("name") or resource.get("id"))}</a>'

    def json_links(self, resource: Json) -> str:
        return (f'<span class="json-links"><a href="{esc(self.artifact_json(resource))}" type="{FHIR_JSON}">JSON</a>'
                f' · <a href="{esc(self.artifact_fhir(resource))}" type="{FHIR_JSON}">FHIR API</a></span>')

    def system_name(self, system: str | None) -> str:
        if not system:
            return ""
        if system in SYSTEM_NAMES:
            return SYSTEM_NAMES[system]
        resource = self.content.resolve(system)
        return str(resource.get("title") or resource.get("name")) if resource else system

    def coding_html(self, coding: Json) -> str:
        display = self.concepts.get((coding.get("system"), coding.get("code")), {}).get("display") or coding.get("display")
        code = f'<span class="code">{esc(self.system_name(coding.get("system")))} {esc(coding.get("code"))}</span>'
        return f"{esc(display)} {code}" if display else code

    def fhirpath(self, expression: str) -> str:
        """An expression as HTML, each ``%name`` of a Library finding linked to it."""
        def link(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.variables:
                return f'<a href="#finding-{esc(name)}">%{esc(name)}</a>'
            return f"%{esc(name)}"
        return _VARIABLE_REF.sub(link, esc(expression))

    def template(self, expression: str) -> str | None:
        """A concatenation of literals and findings as readable text with the findings as slots, else None."""
        pieces = split_concatenation(expression)
        out, literal_seen = [], False
        for piece in pieces:
            text = fhirpath_literal(piece)
            if text is not None:
                out.append(esc(text))
                literal_seen = True
                continue
            match = re.match(r"%([A-Za-z_][A-Za-z0-9_]*)", piece)
            if not match:
                return None
            name = match.group(1)
            hint = self.variables.get(name, {}).get("description")
            title = f' title="{esc(hint)}"' if hint else ""
            target = f'<a href="#finding-{esc(name)}">{esc(name)}</a>' if name in self.variables else esc(name)
            out.append(f'<var class="slot"{title}>{target}</var>')
        return "".join(out) if literal_seen else None

    def paragraphs(self, text: Any, css: str = "") -> str:
        cls = f' class="{css}"' if css else ""
        return "".join(f"<p{cls}>{esc(p.strip())}</p>" for p in re.split(r"\n\s*\n", str(text or "")) if p.strip())

    def indicator(self, action: Json) -> str:
        return INDICATORS.get(str(action.get("priority")), "info")

    def rule_codes(self, action: Json) -> list[Json]:
        return [c for c in _codings(action.get("code")) if c.get("code")]

    # page -------------------------------------------------------------------------------------------------------
    def render(self) -> str:
        pub = self.publication
        title = pub.get("title") or (self.pathway or {}).get("title") or "Protocol"
        sections = [
            ("checked-first", "Checked first: what suspends the protocol", self.section_suspensions()),
            ("phases", "Phases of care", self.section_phases()),
            ("patient-view-cards", "Other cards when the chart is opened", self.section_pathway_cards()),
            ("order-safety", "Safety rules on draft orders", self.section_order_cards(rules=True)),
            ("order-other", "Other draft orders reviewed", self.section_order_cards(rules=False)),
            ("safety-rules", "Safety rules at a glance", self.section_rule_table()),
            ("logic", "Named findings and data requirements", self.section_library()),
            ("terminology", "Terminology", self.section_terminology()),
            ("artifacts", "Artifacts", self.section_artifacts()),
        ]
        sections = [s for s in sections if s[2]]
        nav = "".join(f'<li><a href="#{sid}">{esc(label)}</a></li>' for sid, label, _ in sections)
        body = "".join(f'<section id="{sid}" aria-labelledby="{sid}-h"><h2 id="{sid}-h">{esc(label)}</h2>{inner}</section>'
                       for sid, label, inner in sections)
        version = pub.get("version") or (self.pathway or {}).get("version") or ""
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)} (version {esc(version)})</title>\n"
            f'<meta name="description" content="{esc((self.pathway or {}).get("description") or title)}">\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n"
            '<a class="skip" href="#main">Skip to the protocol</a>\n'
            f"{self.header(title)}\n"
            f'<nav aria-label="Contents"><h2 class="nav-title">Contents</h2><ol>{nav}</ol></nav>\n'
            f'<main id="main">\n{body}\n</main>\n'
            f"{self.footer(title, version)}\n</body>\n</html>\n"
        )

    def header(self, title: str) -> str:
        pub = self.publication
        rows = [("Version", pub.get("version")), ("Status", pub.get("status") + (" (experimental)" if pub.get("experimental") else "")
                                                   if pub.get("status") else None),
                ("Date", pub.get("date")), ("Publisher", pub.get("publisher")),
                ("Canonical base", f'<code>{esc(pub.get("canonical"))}</code>' if pub.get("canonical") else None),
                ("FHIR version", pub.get("fhirVersion")), ("Licence", pub.get("license")), ("Package", pub.get("packageId"))]
        items = "".join(f'<div class="wide"><dt>{esc(k)}</dt><dd>{v}</dd></div>' if k == "Canonical base"
                        else f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in rows if v)
        lead = markdown((self.pathway or {}).get("description"), "lead")
        return f'<header class="page-header"><p class="kicker">Clinical protocol</p><h1>{esc(title)}</h1>{lead}<dl class="meta">{items}</dl></header>'

    def footer(self, title: str, version: str) -> str:
        count = len(self.content.resources)
        return (f'<footer><p>{esc(title)}, version {esc(version)}. This page is generated from the {count} artifacts the service '
                'has loaded; the <a href="#artifacts">artifacts</a> are the authoritative version.</p></footer>')

    # phases -----------------------------------------------------------------------------------------------------
    def section_phases(self) -> str:
        if not self.pathway:
            return ""
        group = self._phase_group(self.pathway)
        phases = self.phases()
        intro = self.plan_intro(self.pathway)
        if group is None:
            return intro
        plan_card = self.card(group, level=3, children=False, extra=self.timeline(phases) + self.phase_list(phases),
                              note=self.held_back_note(group))
        blocks = [self.phase_section(p) for p in phases]
        rest = [c for c in group.get("action") or [] if isinstance(c, dict) and not c.get("timingRange")]
        blocks += [self.action_block(c, level=3) for c in rest]
        blocks += [self.card(v, level=3, note=self.held_back_note(v)) for v in self.plan_variants()]
        return intro + plan_card + "".join(blocks)

    def held_back_note(self, action: Json) -> str:
        """A line naming the rules that suspend the protocol and so keep this card from being given."""
        held = self.held_back_by(action)
        rules = [f'<a href="#{esc(s.anchor)}">{esc(s.label)}</a>' for s in self.suspensions if s.finding in held and s.card is not action]
        return f'<p class="held-back">Not given while a rule that suspends the protocol applies: {", ".join(rules)}.</p>' if rules else ""

    def plan_intro(self, plan: Json) -> str:
        hooks = sorted({t.get("name") for a in plan.get("action") or [] for t in a.get("trigger") or [] if t.get("name")})
        parts = [f'<p class="source">From <a href="#{esc(self.artifact_anchor(plan))}">{esc(plan.get("title") or plan.get("id"))}</a>'
                 + (f" · hooks: {', '.join(f'<code>{esc(h)}</code>' for h in hooks)}" if hooks else "")
                 + f" · {self.json_links(plan)}</p>"]
        for key in ("purpose", "usage"):
            if plan.get(key):
                parts.append(markdown(plan[key]))
        return "".join(parts)

    def phase_list(self, phases: list[Phase]) -> str:
        items = "".join(f'<li><a href="#{esc(p.action.get("id"))}">{esc(p.action.get("title") or p.action.get("id"))}</a>'
                        f' <span class="window">{esc(window_label(p.low, p.high))}</span></li>' for p in phases)
        return f'<ol class="phase-list">{items}</ol>' if items else ""

    def timeline(self, phases: list[Phase]) -> str:
        """The phases as bands on a time axis (logarithmic, so that the first 48 hours stay visible)."""
        if not phases:
            return ""
        width, margin, top, band_h, line_h, font = 960, 16, 34, 56, 17, 13
        ends = [p.high for p in phases if p.high is not None] + [p.low for p in phases]
        last = max(ends) if ends else 24.0
        open_end = any(p.high is None for p in phases)
        end = max(last * 2, last + 24) if open_end else last
        scale = lambda h: math.log1p(h / 24)  # noqa: E731
        x = lambda h: margin + (width - 2 * margin) * scale(h) / scale(end)  # noqa: E731
        shapes, labels, ticks, description = [], [], [], []
        max_lines = 1
        for index, phase in enumerate(phases):
            title = str(phase.action.get("title") or phase.action.get("id") or "")
            head, _, tail = title.partition(": ")
            if not tail:
                head, tail = title, ""
            x0, x1 = x(phase.low), x(phase.high if phase.high is not None else end)
            cls = f"phase-band band-{index % 4}"
            window = window_label(phase.low, phase.high)
            description.append(f"{title}: {window}.")
            if phase.high is None:
                path = f"M{x0 + 1:.1f} {top} H{x1 - 18:.1f} L{x1:.1f} {top + band_h / 2} L{x1 - 18:.1f} {top + band_h} H{x0 + 1:.1f} Z"
                shapes.append(f'<path class="{cls}" d="{path}" data-action="{esc(phase.action.get("id"))}"><title>{esc(title)}: {esc(window)}</title></path>')
            else:
                shapes.append(f'<rect class="{cls}" x="{x0 + 1:.1f}" y="{top}" width="{max(x1 - x0 - 2, 1):.1f}" height="{band_h}" rx="6" '
                              f'data-action="{esc(phase.action.get("id"))}"><title>{esc(title)}: {esc(window)}</title></rect>')
            centre = (x0 + x1 - (18 if phase.high is None else 0)) / 2
            labels.append(f'<text class="band-head" x="{centre:.1f}" y="{top + band_h / 2 + 5}" text-anchor="middle">{esc(head)}</text>')
            per_line = max(8, int((x1 - x0 - 8) / (font * 0.56)))
            lines = wrap(tail, per_line)
            max_lines = max(max_lines, len(lines))
            for n, line in enumerate(lines):
                labels.append(f'<text class="band-label" x="{centre:.1f}" y="{top + band_h + 20 + n * line_h}" text-anchor="middle">{esc(line)}</text>')
        for hours in sorted({p.low for p in phases} | {p.high for p in phases if p.high is not None}):
            tx = x(hours)
            anchor = "start" if tx < margin + 4 else "middle"
            ticks.append(f'<line class="tick" x1="{tx:.1f}" y1="{top - 8}" x2="{tx:.1f}" y2="{top + band_h}"></line>'
                         f'<text class="tick-label" x="{tx:.1f}" y="{top - 13}" text-anchor="{anchor}">{esc("onset" if hours == 0 else duration_label(hours))}</text>')
        height = top + band_h + 20 + max_lines * line_h + 4
        title_text = "Phases of care by time since onset of the spasm"
        desc = " ".join(description) + " The time axis is logarithmic."
        return (f'<figure class="timeline"><div class="timeline-scroll"><svg xmlns="http://www.w3.org/2000/svg" role="img" '
                f'aria-labelledby="timeline-title timeline-desc" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
                f'preserveAspectRatio="xMinYMin meet"><title id="timeline-title">{esc(title_text)}</title>'
                f'<desc id="timeline-desc">{esc(desc)}</desc>{"".join(shapes)}{"".join(ticks)}{"".join(labels)}</svg></div>'
                f"<figcaption>{esc(title_text)} (logarithmic scale; each window includes its start and excludes its end).</figcaption></figure>")

    def phase_section(self, phase: Phase) -> str:
        action = phase.action
        recs = "".join(self.action_block(child, level=4) for child in action.get("action") or [] if isinstance(child, dict))
        return (f'<section class="phase" id="{esc(action.get("id"))}"><h3>{esc(action.get("title") or action.get("id"))}</h3>'
                f'<p class="window">{esc(window_label(phase.low, phase.high).capitalize())}</p>'
                f'{self.paragraphs(action.get("description"))}{self.conditions(action)}{recs}</section>')

    # actions and cards --------------------------------------------------------------------------------------------
    def action_block(self, action: Json, level: int) -> str:
        """A recommendation or a part of a card: evidence, order, citations, then its own children."""
        aid = action.get("id")
        heading = min(level, 6)
        codes = self.code_badges(action)
        kind = self.action_type(action)
        children = "".join(self.action_block(c, level + 1) for c in action.get("action") or [] if isinstance(c, dict))
        return (f'<article class="rec" id="{esc(aid)}"><h{heading}><a class="self" href="#{esc(aid)}">{esc(action.get("title") or aid)}</a></h{heading}>'
                f'{codes}{kind}{self.evidence(action)}{self.paragraphs(action.get("description"))}{self.shown_as(action)}'
                f'{self.rationale(action)}{self.order(action)}{self.citations(action)}{self.conditions(action)}'
                f'{self.computed(action)}{children}</article>')

    def card(self, action: Json, level: int, children: bool = True, extra: str = "", note: str = "") -> str:
        """A top-level action: one CDS Hooks card."""
        aid = action.get("id")
        indicator = self.indicator(action)
        hooks = [t.get("name") for t in action.get("trigger") or [] if t.get("name")]
        raised = "".join(f', <span class="indicator ind-{esc(ind)}">{esc(ind)}</span> when {cond}' for ind, cond in self.raised_priority(action))
        meta = [f'<span class="indicator ind-{indicator}">{esc(indicator)}</span>{raised}']
        meta += [f"<code>{esc(h)}</code>" for h in hooks]
        if action.get("textEquivalent"):
            meta.append(f'suggestion: “{esc(action["textEquivalent"])}”')
        kids = "".join(self.action_block(c, level + 1) for c in action.get("action") or [] if isinstance(c, dict)) if children else ""
        return (f'<article class="card card-{indicator}" id="{esc(aid)}"><h{level}><a class="self" href="#{esc(aid)}">'
                f'{esc(action.get("title") or aid)}</a></h{level}>{self.code_badges(action)}'
                f'<p class="card-meta">{" · ".join(meta)}</p>{note}{self.evidence(action)}{self.paragraphs(action.get("description"))}'
                f'{self.shown_as(action)}{self.rationale(action)}{self.order(action)}{self.citations(action)}{self.override_reasons(action)}'
                f'{self.conditions(action)}{self.computed(action)}{extra}{kids}</article>')

    def code_badges(self, action: Json) -> str:
        badges = []
        for coding in self.rule_codes(action):
            concept = self.concepts.get((coding.get("system"), coding.get("code")), {})
            display = concept.get("display") or coding.get("display") or ""
            css = "rule" if RULE_CODE.fullmatch(str(coding["code"])) else "topic"
            badges.append(f'<span class="badge {css}" title="{esc(display)}">{esc(coding["code"])}</span>'
                          + (f' <span class="badge-text">{esc(display)}</span>' if css == "rule" and display else ""))
        return f'<p class="codes">{" ".join(badges)}</p>' if badges else ""

    @staticmethod
    def action_type(action: Json) -> str:
        codings = _codings(action.get("type"))
        code = codings[0].get("code") if codings else None
        labels = {"create": "creates an order", "update": "changes an existing order", "remove": "removes a drafted order"}
        return f'<p class="action-type">Action: {esc(labels.get(str(code), code))}</p>' if code else ""

    def evidence(self, action: Json) -> str:
        strength = _extension(action, EXT_STRENGTH)
        quality = _extension(action, EXT_QUALITY)
        direction = _extension(action, EXT_DIRECTION)
        if not (strength or quality or direction):
            return ""
        parts = []
        if direction:
            code = _concept_code(direction) or ""
            parts.append(f'<span class="direction dir-{esc(code)}">{esc(_concept_label(direction))}</span>')
        if strength:
            parts.append(f'<span><span class="label">Strength of recommendation:</span> {esc(_concept_label(strength))}</span>')
        if quality:
            parts.append(f'<span><span class="label">Quality of evidence:</span> {esc(_concept_label(quality))}</span>')
        return f'<p class="evidence">{"".join(parts)}</p>'

    def rationale(self, action: Json) -> str:
        text = (_extension(action, EXT_RATIONALE) or {}).get("valueMarkdown")
        if not text:
            return ""
        return f'<div class="rationale"><p class="label">Rationale</p>{markdown(text)}</div>'

    def shown_as(self, action: Json) -> str:
        """Card text computed from the record, as a template with the findings it fills in."""
        lines = []
        for dv in action.get("dynamicValue") or []:
            path, expression = dv.get("path"), (dv.get("expression") or {}).get("expression")
            if path in ("action.title", "action.description", "title", "description") and isinstance(expression, str):
                rendered = self.template(expression)
                if rendered is not None:
                    what = "Title" if path.endswith("title") else "Text"
                    lines.append(f'<p class="shown-as"><span class="label">{what} on the card:</span> {rendered}</p>')
        return "".join(lines)

    def computed(self, action: Json) -> str:
        rows = []
        for dv in action.get("dynamicValue") or []:
            expression = (dv.get("expression") or {}).get("expression")
            if isinstance(expression, str):
                rows.append(f'<li><code>{esc(dv.get("path"))}</code> = <code class="fhirpath">{self.fhirpath(expression)}</code></li>')
        if not rows:
            return ""
        return f'<details class="logic"><summary>Values set from the record</summary><ul>{"".join(rows)}</ul></details>'

    def conditions(self, action: Json) -> str:
        rows = []
        for condition in action.get("condition") or []:
            expression = (condition.get("expression") or {}).get("expression")
            if isinstance(expression, str):
                rows.append(f'<li><span class="label">{esc(condition.get("kind", ""))}:</span> <code class="fhirpath">{self.fhirpath(expression)}</code></li>')
        if not rows:
            return ""
        return f'<details class="logic"><summary>When it applies</summary><ul>{"".join(rows)}</ul></details>'

    @staticmethod
    def citation_docs(actions: Iterable[Json]) -> list[Json]:
        """The citations of some actions, each once (by URL, else label), in order of appearance."""
        docs: dict[str, Json] = {}
        for action in actions:
            for doc in action.get("documentation") or []:
                if isinstance(doc, dict) and doc.get("type") == "citation":
                    docs.setdefault(str(doc.get("url") or doc.get("label") or doc.get("display")), doc)
        return list(docs.values())

    @staticmethod
    def citation_items(docs: list[Json], details: bool = True) -> str:
        """Citation links; without details (in tables), each by its short label with its title on hover."""
        items = []
        for doc in docs:
            label = (doc.get("display") if details else doc.get("label")) or doc.get("display") or doc.get("label") or doc.get("url") or "citation"
            other = doc.get("label") if details else doc.get("display")
            title = f' title="{esc(other)}"' if other and other != label else ""
            link = f'<a href="{esc(doc["url"])}" rel="noopener noreferrer"{title}>{esc(label)}</a>' if doc.get("url") else esc(label)
            detail = f'<span class="cite">{esc(doc["citation"])}</span>' if details and doc.get("citation") else ""
            items.append(f"<li>{link}{detail}</li>")
        return "".join(items)

    def citations(self, action: Json) -> str:
        items = self.citation_items(self.citation_docs([action]))
        if not items:
            return ""
        return f'<div class="citations"><p class="label">Evidence</p><ul class="cites">{items}</ul></div>'

    def override_reasons(self, action: Json) -> str:
        ext = _extension(action, OVERRIDE_SUFFIX)
        canonical = (ext or {}).get("valueCanonical")
        if not canonical:
            return ""
        valueset = self.content.resolve(canonical, "ValueSet")
        reasons = [c.get("display") or c.get("code") for c in ((valueset or {}).get("expansion") or {}).get("contains") or []]
        listed = "; ".join(esc(r) for r in reasons if r)
        return (f'<p class="overrides"><span class="label">Override reasons</span> ({self.link_resource(canonical, "ValueSet")})'
                f'{": " + listed if listed else ""}</p>')

    def order(self, action: Json) -> str:
        """The ActivityDefinition an action proposes: kind, codes, dosage, instructions and fixed values."""
        canonical = action.get("definitionCanonical")
        if not canonical:
            return ""
        definition = self.content.resolve(canonical, "ActivityDefinition")
        if definition is None:
            return f'<p class="order">Order: <code>{esc(canonical)}</code></p>'
        rows = [("Kind", esc(definition.get("kind")))]  # (label as HTML, value as HTML)
        codings = _codings(definition.get("code")) + _codings(definition.get("productCodeableConcept"))
        if codings:
            rows.append(("Code" if len(codings) == 1 else "Codes", "<br>".join(self.coding_html(c) for c in codings)))
        for dosage in definition.get("dosage") or []:
            if dosage.get("text"):
                rows.append(("Dosage", esc(dosage["text"])))
            if dosage.get("patientInstruction"):
                rows.append(("Patient instruction", esc(dosage["patientInstruction"])))
        for dv in definition.get("dynamicValue") or []:
            text = fhirpath_literal(str((dv.get("expression") or {}).get("expression") or ""))
            if text is None:
                continue
            path = str(dv.get("path"))
            known = {"patientInstruction": "Patient instruction", "status": "Sets status", "statusReason.text": "Reason given"}
            rows.append((esc(known[path]) if path in known else f"<code>{esc(path)}</code>", esc(text)))
        grid = "".join(f"<div><dt>{k if k.startswith('<code>') else esc(k)}</dt><dd>{v}</dd></div>" for k, v in rows if v)
        desc = markdown(definition.get("description"))
        types = _codings(action.get("type"))
        verb = {"update": "Change", "remove": "Removes"}.get(str(types[0].get("code")) if types else "", "Proposes")
        return (f'<div class="order"><p class="order-title"><span class="label">{verb}</span> '
                f'<a href="#{esc(self.artifact_anchor(definition))}">{esc(definition.get("title") or definition.get("id"))}</a> '
                f'{self.json_links(definition)}</p>{desc}<dl>{grid}</dl></div>')

    # rules that suspend the protocol ----------------------------------------------------------------------------------
    def section_suspensions(self) -> str:
        if not self.suspensions:
            return ""
        return ('<p>Checked before anything else. While one of these findings is on record the protocol is suspended for the '
                'patient: the cards of the rule take the place of the plan, and the cards it holds back are not given. Each rule '
                'is read from the artifacts: the finding that every other card of its PlanDefinition needs to be absent.</p>'
                + "".join(self.suspension_block(s) for s in self.suspensions))

    def suspension_block(self, rule: Suspension) -> str:
        code = rule.coding.get("code")
        badge = f'<span class="badge topic">{esc(code)}</span> ' if code else ""
        definition = f'<p class="rule-definition">{esc(rule.concept["definition"])}</p>' if rule.concept.get("definition") else ""
        variable = self.variables.get(rule.finding, {})
        finding = (f'<a href="#finding-{esc(rule.finding)}"><code>%{esc(rule.finding)}</code></a>' if rule.finding in self.variables
                   else f"<code>%{esc(rule.finding)}</code>")
        when = f'<p>{finding} exists{": " + esc(variable["description"]) if variable.get("description") else ""}</p>'
        valuesets = []
        for canonical in self.finding_valuesets(rule.finding):
            valueset = self.content.resolve(canonical, "ValueSet")
            if valueset is None:
                valuesets.append(f"<li><code>{esc(canonical)}</code></li>")
                continue
            expansion = valueset.get("expansion") or {}
            total = expansion.get("total", len(expansion.get("contains") or []))
            valuesets.append(f'<li>{self.link_resource(canonical, "ValueSet")} <span class="code">ValueSet {esc(valueset.get("id"))}, '
                             f'{esc(total)} code{"s" if total != 1 else ""}</span> {self.json_links(valueset)}</li>')
        codes = f'<ul class="plain">{"".join(valuesets)}</ul>' if valuesets else ""
        rows = [("Suspends the protocol when", when + codes),
                ("Evidence", self.rule_evidence(rule.actions)),
                ("Cards it gives", self.cards_by_hook(rule)),
                ("Held back while it applies", self.held_back_list(rule))]
        facts = "".join(f"<div><dt>{esc(k)}</dt><dd>{v}</dd></div>" for k, v in rows if v)
        cards = [a for a in rule.actions if self.card_of.get(a.get("id", "")) is a]
        return (f'<article class="first-rule" id="{esc(rule.anchor)}"><h3><a class="self" href="#{esc(rule.anchor)}">{badge}{esc(rule.label)}</a></h3>'
                f'{definition}<dl class="rule-facts">{facts}</dl>'
                + "".join(self.card(a, level=4) for a in cards) + "</article>")

    def cards_by_hook(self, rule: Suspension) -> str:
        groups: dict[tuple[str, ...], list[Json]] = {}
        for action in rule.actions:
            card = self.card_of.get(action.get("id", ""), action)
            hooks = tuple(t.get("name") for t in card.get("trigger") or [] if isinstance(t, dict) and t.get("name"))
            groups.setdefault(hooks, []).append(action)
        items = []
        for hooks, actions in groups.items():
            label = ", ".join(f"<code>{esc(h)}</code>" for h in hooks) or "no hook"
            items.append(f'<li>On {label}: {self.rule_cell(actions, "")}</li>')
        return f'<ul class="plain hooks">{"".join(items)}</ul>'

    def held_back_list(self, rule: Suspension) -> str:
        items = []
        for plan in [rule.plan] + [p for p in self.plans if p is not rule.plan]:
            tops = [a for a in plan.get("action") or [] if isinstance(a, dict) and all(a is not r for r in rule.actions)]
            held = [a for a in tops if rule.finding in self.held_back_by(a)]
            if not held:
                continue
            hooks = list(dict.fromkeys(t.get("name") for a in held for t in a.get("trigger") or [] if isinstance(t, dict) and t.get("name")))
            label = ", ".join(f"<code>{esc(h)}</code>" for h in hooks) or esc(plan.get("title") or plan.get("id"))
            links = "".join(f'<li><a href="#{esc(a.get("id"))}">{esc(a.get("title") or a.get("id"))}</a></li>' for a in held)
            if len(held) == len(tops):
                what = f'every other card of <a href="#{esc(self.artifact_anchor(plan))}">{esc(plan.get("title") or plan.get("id"))}</a>'
            else:
                what = f'{len(held)} card{"s" if len(held) != 1 else ""} of <a href="#{esc(self.artifact_anchor(plan))}">{esc(plan.get("title") or plan.get("id"))}</a>'
            items.append(f'<li>On {label}: {what}<details><summary>The {len(held)} card{"s" if len(held) != 1 else ""}</summary>'
                         f'<ul>{links}</ul></details></li>')
        return f'<ul class="plain">{"".join(items)}</ul>' if items else ""

    # other cards ----------------------------------------------------------------------------------------------------
    def section_pathway_cards(self) -> str:
        if not self.pathway:
            return ""
        group = self._phase_group(self.pathway)
        cards = [a for a in self.pathway.get("action") or [] if isinstance(a, dict) and a is not group and id(a) not in self.moved]
        if not cards:
            return ""
        return (f'<p>The cards that the pathway can add beside the plan card: problems with the record (the onset date, data '
                f'that cannot be read), the cyclobenzaprine proposal and each medication finding.</p>{self.plan_intro(self.pathway)}'
                + "".join(self.card(a, level=3) for a in cards))

    def is_rule_card(self, action: Json) -> bool:
        return any(RULE_CODE.fullmatch(str(c.get("code"))) for c in self.rule_codes(action))

    def section_order_cards(self, rules: bool) -> str:
        parts = []
        for plan in self.others:
            cards = [a for a in plan.get("action") or [] if isinstance(a, dict) and self.is_rule_card(a) == rules and id(a) not in self.moved]
            if cards:
                intro = self.plan_intro(plan) + (markdown(plan.get("description")) if rules else "")
                parts.append(intro + "".join(self.card(a, level=3) for a in cards))
        return "".join(parts)

    def section_rule_table(self) -> str:
        rules = sorted(((system, code), concept) for (system, code), concept in self.concepts.items()
                       if RULE_CODE.fullmatch(str(code)))
        rules.sort(key=lambda item: int(item[0][1][1:]))
        if not rules:
            return ""
        rows = []
        for (system, code), concept in rules:
            where: dict[str, list[Json]] = {}
            for plan in self.plans:
                for action in walk(plan.get("action") or []):
                    if any(c.get("system") == system and c.get("code") == code for c in self.rule_codes(action)):
                        where.setdefault(plan.get("id", ""), []).append(action)
            pathway_cell = self.rule_cell(where.get((self.pathway or {}).get("id", ""), []), "No card on patient-view")
            order_actions = [a for p in self.others for a in where.get(p.get("id", ""), [])]
            order_cell = self.rule_cell(order_actions, "No card on draft orders")
            definition = f'<span class="definition">{esc(concept.get("definition"))}</span>' if concept.get("definition") else ""
            actions = [a for found in where.values() for a in found]
            rows.append(f'<tr id="rule-{esc(code)}"><th scope="row"><span class="badge rule">{esc(code)}</span></th>'
                        f'<td data-label="Finding"><strong>{esc(concept.get("display"))}</strong>{definition}{self.reads(actions)}</td>'
                        f'<td data-label="Evidence">{self.rule_evidence(actions, details=False)}</td>'
                        f'<td data-label="On a proposal (patient-view)">{pathway_cell}</td>'
                        f'<td data-label="On a draft order (order-select, order-sign)">{order_cell}</td></tr>')
        return ('<p>Each rule is a code of the protocol\'s CodeSystem; its finding, evidence and effect are read from the actions that '
                'carry the code. The indicator comes from the priority of the card the action belongs to.</p>'
                '<div class="table-wrap"><table class="rules"><thead><tr><th scope="col">Rule</th><th scope="col">Finding</th>'
                '<th scope="col">Evidence</th><th scope="col">On a proposal (patient-view)</th>'
                '<th scope="col">On a draft order (order-select, order-sign)</th></tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table></div>')

    def reads(self, actions: list[Json]) -> str:
        """The findings a rule's actions test and the ValueSets those findings read."""
        findings = list(dict.fromkeys(n for a in actions for n in self.required_present(a) if n in self.variables))
        if not findings:
            return ""
        valuesets = list(dict.fromkeys(v for n in findings for v in self.finding_valuesets(n)))
        names = ", ".join(f'<a href="#finding-{esc(n)}"><code>%{esc(n)}</code></a>' for n in findings)
        sets = f' · codes in {", ".join(self.link_resource(v, "ValueSet") for v in valuesets)}' if valuesets else ""
        return f'<span class="reads">Finding {names}{sets}</span>'

    def rule_evidence(self, actions: list[Json], details: bool = True) -> str:
        """The evidence grades of a rule's actions (each distinct grading once) and their citations."""
        grades = "".join(dict.fromkeys(self.evidence(a) for a in actions if self.evidence(a)))
        items = self.citation_items(self.citation_docs(actions), details=details)
        cites = f'<ul class="cites">{items}</ul>' if items else ""
        return (grades + cites) or '<span class="none">No grading given</span>'

    def rule_cell(self, actions: list[Json], empty: str) -> str:
        if not actions:
            return f'<span class="none">{esc(empty)}</span>'
        items = []
        for action in actions:
            card = self.card_of.get(action.get("id", ""), action)
            indicator = self.indicator(card)
            part_of = "" if card is action else f'<span class="part-of">part of the card <a href="#{esc(card.get("id"))}">{esc(card.get("title"))}</a></span>'
            fixes = [c.get("title") for c in action.get("action") or [] if isinstance(c, dict) and c.get("title")]
            suggestion = f'<span class="fixes">Suggests: {esc("; ".join(fixes))}</span>' if fixes else ""
            raised = "".join(f'<span class="raised">the card becomes <span class="indicator ind-{esc(ind)}">{esc(ind)}</span></span>'
                             for ind, _ in self.raised_priority(card, action))
            items.append(f'<li><span class="indicator ind-{indicator}">{esc(indicator)}</span> '
                         f'<a href="#{esc(action.get("id"))}">{esc(action.get("title") or action.get("id"))}</a>{part_of}{raised}{suggestion}</li>')
        return f'<ul class="plain">{"".join(items)}</ul>'

    # library ----------------------------------------------------------------------------------------------------------
    def section_library(self) -> str:
        library = self.library
        if not library:
            return ""
        used_by: dict[str, list[str]] = {}
        for plan in self.plans:
            for action in walk(plan.get("action") or []):
                expressions = [(c.get("expression") or {}).get("expression") for c in action.get("condition") or []]
                expressions += [(d.get("expression") or {}).get("expression") for d in action.get("dynamicValue") or []]
                for name in {n for e in expressions if isinstance(e, str) for n in _VARIABLE_REF.findall(e)}:
                    used_by.setdefault(name, []).append(f'<a href="#{esc(action.get("id"))}">{esc(action.get("id"))}</a>')
        for name, variable in self.variables.items():
            for ref in sorted(set(_VARIABLE_REF.findall(str(variable.get("expression") or ""))) - {name}):
                used_by.setdefault(ref, []).append(f'<a href="#finding-{esc(name)}">%{esc(name)}</a>')
        intro = (f'<p class="source">From <a href="#{esc(self.artifact_anchor(library))}">{esc(library.get("title") or library.get("id"))}</a>'
                 f" · {self.json_links(library)}</p>{markdown(library.get('description'))}")
        params = "".join(f'<tr><th scope="row"><code>{esc(p.get("name"))}</code></th><td data-label="Use">{esc(p.get("use"))}</td>'
                         f'<td data-label="Cardinality">{esc(p.get("min"))}..{esc(p.get("max"))}</td><td data-label="Type">{esc(p.get("type"))}</td>'
                         f'<td data-label="Meaning">{esc(p.get("documentation"))}</td></tr>' for p in library.get("parameter") or [])
        params_html = ('<h3 id="parameters">Inputs of the ordering hooks</h3><div class="table-wrap"><table><thead><tr><th scope="col">Name</th>'
                       '<th scope="col">Use</th><th scope="col">Cardinality</th><th scope="col">Type</th><th scope="col">Meaning</th></tr></thead>'
                       f"<tbody>{params}</tbody></table></div>") if params else ""
        reqs = []
        for dr in library.get("dataRequirement") or []:
            filters = []
            for cf in dr.get("codeFilter") or []:
                target = self.link_resource(cf["valueSet"], "ValueSet") if cf.get("valueSet") else \
                    ", ".join(self.coding_html(c) for c in cf.get("code") or [])
                filters.append(f'<code>{esc(cf.get("path") or cf.get("searchParam"))}</code> in {target}')
            dates = [self.date_filter(df) for df in dr.get("dateFilter") or []]
            reqs.append(f'<tr id="data-{esc(dr.get("id"))}"><th scope="row"><code>{esc(dr.get("id"))}</code></th>'
                        f'<td data-label="Type">{esc(dr.get("type"))}</td><td data-label="Code filter">{"<br>".join(filters) or "—"}</td>'
                        f'<td data-label="Date filter">{"<br>".join(dates) or "—"}</td></tr>')
        reqs_html = ('<h3 id="data-requirements">Data the protocol reads</h3><div class="table-wrap"><table><thead><tr><th scope="col">Name</th>'
                     '<th scope="col">Type</th><th scope="col">Code filter</th><th scope="col">Date filter</th></tr></thead>'
                     f'<tbody>{"".join(reqs)}</tbody></table></div>') if reqs else ""
        findings = []
        for name, variable in self.variables.items():
            uses = used_by.get(name, [])
            used = f'<p class="used-by"><span class="label">Used by</span> {", ".join(uses)}</p>' if uses else ""
            language = variable.get("language") or "text/fhirpath"
            findings.append(f'<div class="finding" id="finding-{esc(name)}"><h4><code>%{esc(name)}</code></h4>'
                            f'{self.paragraphs(variable.get("description"))}{used}<details><summary>Expression ({esc(language)})</summary>'
                            f'<pre><code class="fhirpath">{self.fhirpath(str(variable.get("expression") or ""))}</code></pre></details></div>')
        findings_html = (f'<h3 id="findings">Named findings ({len(findings)})</h3><div class="findings">{"".join(findings)}</div>'
                         if findings else "")
        return intro + reqs_html + params_html + findings_html

    def date_filter(self, df: Json) -> str:
        path = f'<code>{esc(df.get("path") or df.get("searchParam"))}</code>'
        if isinstance(df.get("valueDuration"), dict):
            hours = _hours(df["valueDuration"])
            amount = duration_label(hours) if hours is not None else f'{df["valueDuration"].get("value")} {df["valueDuration"].get("unit")}'
            return f"{path} within the last {esc(amount)}"
        if isinstance(df.get("valuePeriod"), dict):
            period = df["valuePeriod"]
            return f'{path} from {esc(period.get("start", "…"))} to {esc(period.get("end", "…"))}'
        if df.get("valueDateTime"):
            return f'{path} on or after {esc(df["valueDateTime"])}'
        return path

    # terminology and artifacts ------------------------------------------------------------------------------------------
    def section_terminology(self) -> str:
        blocks = []
        for valueset in self.content.of_type("ValueSet"):
            expansion = valueset.get("expansion") or {}
            contains = expansion.get("contains") or []
            total = expansion.get("total", len(contains))
            included = [self.link_resource(v, "ValueSet") for inc in (valueset.get("compose") or {}).get("include") or []
                        for v in inc.get("valueSet") or []]
            systems = sorted({self.system_name(inc.get("system")) for inc in (valueset.get("compose") or {}).get("include") or [] if inc.get("system")})
            facts = [f"{esc(total)} code{'s' if total != 1 else ''}"]
            if systems:
                facts.append("from " + esc(", ".join(systems)))
            if included:
                facts.append("joins " + ", ".join(included))
            if contains and len(contains) <= CODES_SHOWN:
                rows = "".join(f'<tr><td>{esc(self.system_name(c.get("system")))}</td><td><code>{esc(c.get("code"))}</code></td>'
                               f'<td>{esc(c.get("display"))}</td></tr>' for c in contains)
                codes = (f'<details><summary>Codes</summary><div class="table-wrap"><table class="codes-table"><thead><tr><th scope="col">System</th>'
                         f'<th scope="col">Code</th><th scope="col">Display</th></tr></thead><tbody>{rows}</tbody></table></div></details>')
            elif contains:
                codes = f'<p class="note">{esc(len(contains))} codes: see the <a href="{esc(self.artifact_json(valueset))}">JSON</a>.</p>'
            else:
                codes = ""
            blocks.append(f'<div class="vs" id="{esc(self.artifact_anchor(valueset))}"><h4>{esc(valueset.get("title") or valueset.get("id"))}</h4>'
                          f'<p class="source"><code>{esc(valueset.get("url"))}</code> · {self.json_links(valueset)}</p>'
                          f'{markdown(valueset.get("description"))}<p class="facts">{"; ".join(facts)}</p>{codes}</div>')
        systems_html: list[str] = []
        for codesystem in self.content.of_type("CodeSystem"):
            rows = "".join(f'<tr><td><code>{esc(c.get("code"))}</code></td><td>{esc(c.get("display"))}</td><td>{esc(c.get("definition"))}</td></tr>'
                           for c in self._concepts(codesystem.get("concept")))
            table = (f'<details><summary>Codes</summary><div class="table-wrap"><table class="codes-table"><thead><tr><th scope="col">Code</th>'
                     f'<th scope="col">Display</th><th scope="col">Definition</th></tr></thead><tbody>{rows}</tbody></table></div></details>') if rows else ""
            systems_html.append(f'<div class="vs" id="{esc(self.artifact_anchor(codesystem))}"><h4>{esc(codesystem.get("title") or codesystem.get("id"))}</h4>'
                             f'<p class="source"><code>{esc(codesystem.get("url"))}</code> · {self.json_links(codesystem)}</p>'
                             f'{markdown(codesystem.get("description"))}{table}</div>')
        blocks = systems_html + blocks
        if not blocks:
            return ""
        return f'<p>The CodeSystems and ValueSets of the protocol, with the codes of the smaller ValueSets.</p><div class="vs-list">{"".join(blocks)}</div>'

    def section_artifacts(self) -> str:
        rows = []
        order = {t: i for i, t in enumerate(TYPE_ORDER)}
        for resource in sorted(self.content.resources, key=lambda r: (order.get(r["resourceType"], len(order)), str(r.get("id", "")))):
            anchor = self.artifact_anchor(resource)
            # ValueSets and CodeSystems have their anchor in the terminology section; the rest have it here.
            row_id = f' id="{esc(anchor)}"' if resource["resourceType"] not in ("ValueSet", "CodeSystem") else f' id="artifact-{esc(anchor)}"'
            rows.append(f'<tr{row_id}><td data-label="Type">{esc(resource["resourceType"])}</td>'
                        f'<td data-label="Id"><code>{esc(resource.get("id"))}</code></td>'
                        f'<td data-label="Title">{esc(resource.get("title") or resource.get("name") or "")}</td>'
                        f'<td data-label="Version">{esc(resource.get("version") or "")}</td><td data-label="Status">{esc(resource.get("status") or "")}</td>'
                        f'<td data-label="Links">{self.json_links(resource)}</td></tr>')
        return ('<p>Every artifact the service has loaded. <em>JSON</em> is the artifact as loaded (public); <em>FHIR API</em> is the same '
                'resource from the service\'s FHIR endpoint, which may require authorisation.</p>'
                '<div class="table-wrap"><table class="artifacts"><thead><tr><th scope="col">Type</th><th scope="col">Id</th><th scope="col">Title</th>'
                '<th scope="col">Version</th><th scope="col">Status</th><th scope="col">Links</th></tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table></div>')


def wrap(text: str, width: int) -> list[str]:
    """Words of ``text`` in lines of at most ``width`` characters (a longer word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def render_protocol_page(content: Content) -> str:
    """The HTML of the protocol page for the given artifacts."""
    return PageRenderer(content).render()


# -- serving ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CachedPage:
    html: bytes
    etag: str


@bp.record_once
def _render_at_start(setup: BlueprintSetupState) -> None:
    """Render the page once, when the blueprint is registered (create_app has stored the loaded content by then)."""
    content = setup.app.extensions["back_spasm_cds"].engine.content
    text = render_protocol_page(content).encode("utf-8")
    setup.app.extensions[PAGE_KEY] = CachedPage(text, hashlib.sha256(text).hexdigest()[:32])


@bp.get("/")
@bp.get("/protocol")
def protocol_page() -> Response:
    """The protocol page (public, no authentication)."""
    page: CachedPage = current_app.extensions[PAGE_KEY]
    response = Response(page.html, mimetype="text/html")
    response.set_etag(page.etag)
    response.headers.update(PAGE_HEADERS)
    return response.make_conditional(request)


@bp.get("/protocol/artifacts/<name>.json")
def artifact(name: str) -> Response:
    """One artifact as loaded, by its file name ``{Type}-{id}.json`` (public, no authentication)."""
    resource_type, _, resource_id = name.partition("-")
    resource = current_app.extensions["back_spasm_cds"].engine.content.get(resource_type, resource_id) if resource_id else None
    if resource is None:
        raise NotFound(f"no artifact '{name}.json' in the protocol (see /protocol#artifacts)")
    body = json.dumps(resource, ensure_ascii=False, indent=2) + "\n"
    response = Response(body, mimetype=FHIR_JSON)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = f'inline; filename="{resource_type}-{resource_id}.json"'
    return response


CSS = """
:root{--ink:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--accent:#0b5cad;
--info:#0b5cad;--info-bg:#e7f0fb;--warning:#8a5300;--warning-bg:#fff4d6;--critical:#b3261e;--critical-bg:#fde8e7;color-scheme:light}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;overflow-wrap:break-word;background:var(--bg);color:var(--ink);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.skip{position:absolute;left:-9999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem;z-index:2}
header.page-header,nav,main,footer{max-width:64rem;margin:0 auto;padding:0 1.25rem}
header.page-header{padding-top:1.5rem;border-bottom:1px solid var(--line);padding-bottom:1rem}
.kicker{margin:0;color:var(--muted);text-transform:uppercase;letter-spacing:.08em;font-size:.8rem}
h1{font-size:1.9rem;line-height:1.2;margin:.2rem 0 .6rem}
h2{font-size:1.45rem;margin:2.2rem 0 .8rem;padding-top:.6rem;border-top:2px solid var(--ink)}
h3{font-size:1.2rem;margin:1.6rem 0 .5rem}
h4{font-size:1.05rem;margin:.2rem 0 .4rem}
h5,h6{font-size:1rem;margin:.2rem 0 .3rem}
p{margin:.4rem 0}
a{color:var(--accent)}
a.self{color:inherit;text-decoration:none}a.self:hover{text-decoration:underline}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
code{overflow-wrap:anywhere}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:.6rem .8rem;white-space:pre-wrap;overflow-wrap:anywhere;margin:.4rem 0}
.lead{font-size:1.05rem;max-width:48rem}
dl.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(12rem,1fr));gap:.4rem 1.2rem;margin:1rem 0 0}
dl.meta div{min-width:0}dl.meta div.wide{grid-column:span 2}dl.meta dt{font-size:.78rem;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}dl.meta dd{margin:0;overflow-wrap:anywhere}
nav{margin-top:1rem}.nav-title{font-size:1rem;border:0;margin:0;padding:0}
nav ol{display:flex;flex-wrap:wrap;gap:.3rem 1.4rem;list-style-position:inside;padding:0;margin:.3rem 0}
.label{font-weight:600}
.part-of{display:block}
.source,.window,.card-meta,.action-type,.used-by,.facts,.note,.part-of{color:var(--muted);font-size:.92rem}
.window{font-style:italic}
figure.timeline{margin:1rem 0}
.timeline-scroll{overflow-x:auto}
.timeline svg{display:block;width:100%;min-width:38rem;height:auto}
.timeline figcaption{color:var(--muted);font-size:.85rem}
.phase-band{stroke:#1b1f24;stroke-width:1}
.band-0{fill:#fde2c8}.band-1{fill:#fff1b8}.band-2{fill:#d5ecd4}.band-3{fill:#d6e4f5}
.band-head{font:700 15px system-ui,sans-serif;fill:#1b1f24}
.band-label{font:13px system-ui,sans-serif;fill:#1b1f24}
.tick{stroke:#57606a;stroke-width:1}
.tick-label{font:12px system-ui,sans-serif;fill:#57606a}
.phase-list{padding-left:1.4rem}.phase-list li{margin:.15rem 0}
section.phase{border-top:1px solid var(--line);margin-top:1.4rem}
article.rec{border:1px solid var(--line);border-radius:8px;padding:.7rem .9rem;margin:.8rem 0;background:#fff}
article.rec article.rec{background:var(--soft);margin:.6rem 0 .2rem}
article.card{border:1px solid var(--line);border-left:6px solid var(--info);border-radius:8px;padding:.8rem 1rem;margin:1rem 0}
article.card-warning{border-left-color:#d08a00}article.card-critical{border-left-color:var(--critical)}
article.card>h3,article.card>h4{margin-top:0}
.indicator{display:inline-block;border-radius:999px;padding:0 .55rem;font-size:.8rem;font-weight:700;text-transform:uppercase;letter-spacing:.04em}
.ind-info{background:var(--info-bg);color:var(--info)}.ind-warning{background:var(--warning-bg);color:var(--warning)}
.ind-critical{background:var(--critical-bg);color:var(--critical)}
.codes{margin:.1rem 0 .3rem}
.badge{display:inline-block;border:1px solid var(--line);border-radius:4px;padding:0 .35rem;font:600 .8rem ui-monospace,monospace;background:var(--soft)}
.badge.rule{background:#1b1f24;color:#fff;border-color:#1b1f24}
.badge-text{font-size:.9rem;color:var(--muted)}
.evidence{display:flex;flex-wrap:wrap;gap:.2rem 1rem;font-size:.92rem}
.direction{font-weight:700;border-radius:4px;padding:0 .4rem}
.dir-for{background:#dff3e0;color:#1a5e20}.dir-against{background:var(--critical-bg);color:var(--critical)}
.rationale{border-left:3px solid var(--line);padding-left:.7rem;margin:.5rem 0}
.rationale p.label{margin:0}
.shown-as var.slot{font-style:normal;background:#eef2f7;border:1px dashed #8c959f;border-radius:3px;padding:0 .2rem}
.shown-as var.slot a{text-decoration:none}
.order{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:.5rem .8rem;margin:.5rem 0}
.order dl{display:grid;grid-template-columns:10rem 1fr;gap:.2rem .8rem;margin:.3rem 0}
.order dl div{display:contents}.order dt{font-weight:600;color:var(--muted)}.order dd{margin:0}
.order dt,.order dd{min-width:0;overflow-wrap:anywhere}
.code{color:var(--muted);font-size:.85em;white-space:nowrap}
.json-links{font-size:.85rem;white-space:nowrap}
.citations ul.cites{margin:.2rem 0;padding-left:1.2rem}
.cites li{margin:.2rem 0}.cite{display:block;color:var(--muted);font-size:.88rem}
.overrides{font-size:.92rem}
details.logic{margin:.4rem 0;font-size:.92rem}
details summary{cursor:pointer;color:var(--accent)}
details ul{margin:.3rem 0;padding-left:1.2rem}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.92rem;margin:.5rem 0}
th,td{border:1px solid var(--line);padding:.4rem .55rem;text-align:left;vertical-align:top}
thead th{background:var(--soft)}
th[scope=row] code{white-space:nowrap;overflow-wrap:normal}
table.rules .definition{display:block;color:var(--muted);font-size:.88rem;margin-top:.2rem}
table.rules .evidence{display:block}table.rules .evidence>span{display:block}table.rules .evidence>span.direction{display:inline-block;margin-bottom:.15rem}
table.rules ul.cites{padding-left:1rem;font-size:.88rem}
.reads,.raised{display:block;color:var(--muted);font-size:.88rem;margin-top:.2rem}
.held-back{color:var(--critical);font-size:.92rem}
article.first-rule{border:1px solid var(--line);border-left:6px solid var(--critical);border-radius:8px;padding:.8rem 1rem;margin:1rem 0;background:#fffafa}
article.first-rule>h3{margin-top:0}
article.first-rule article.card{background:#fff}
.rule-definition{font-size:1.05rem;font-weight:600;max-width:48rem}
dl.rule-facts{display:grid;grid-template-columns:12rem 1fr;gap:.5rem 1rem;margin:.7rem 0}
dl.rule-facts div{display:contents}dl.rule-facts dt{font-weight:600;color:var(--muted)}dl.rule-facts dd{margin:0;min-width:0}
dl.rule-facts .evidence{margin-top:0}dl.rule-facts ul.cites{margin:.2rem 0;padding-left:1.2rem}
ul.plain{list-style:none;margin:0;padding:0}ul.plain li{margin:.15rem 0 .45rem}
.fixes{display:block;color:var(--muted);font-size:.88rem}
.none{color:var(--muted);font-style:italic}
.findings{display:grid;grid-template-columns:repeat(auto-fill,minmax(19rem,1fr));gap:.7rem}
.finding{border:1px solid var(--line);border-radius:8px;padding:.6rem .8rem;min-width:0}
.finding h4 code{font-size:.95rem}
.vs{border-top:1px solid var(--line);padding:.6rem 0}
.codes-table{font-size:.85rem}
footer{border-top:1px solid var(--line);margin-top:2.5rem;padding-top:.8rem;padding-bottom:2rem;color:var(--muted);font-size:.9rem}
:target{scroll-margin-top:1rem;outline:3px solid #f0b400;outline-offset:2px}
@media (max-width:40rem){
 body{font-size:15px}h1{font-size:1.5rem}
 header.page-header,nav,main,footer{padding:0 .75rem}
 .order dl,dl.rule-facts{grid-template-columns:1fr}.order dd{margin-bottom:.3rem}
 table.rules,table.rules tbody,table.rules tr,table.rules th,table.rules td,
 table.artifacts,table.artifacts tbody,table.artifacts tr,table.artifacts td{display:block;width:100%}
 table.rules thead,table.artifacts thead{display:none}
 table.rules tr,table.artifacts tr{border:1px solid var(--line);border-radius:6px;margin:.6rem 0;padding:.3rem}
 table.rules td,table.rules th,table.artifacts td{border:0;padding:.25rem .3rem}
 table.rules td::before,table.artifacts td::before{content:attr(data-label);display:block;font-size:.75rem;color:var(--muted);text-transform:uppercase}
}
@media print{
 body{font-size:11pt}nav,.skip,.json-links{display:none}
 header.page-header,main,footer{max-width:none;padding:0}
 h2{break-after:avoid}article.rec,article.card,.finding,tr{break-inside:avoid}article.first-rule{background:none}
 .timeline svg{min-width:0}
 .cites a[href^="http"]::after{content:" <" attr(href) ">";font-size:.8em;color:#57606a;overflow-wrap:anywhere}
 a{color:inherit}
}
@media print{details::details-content{content-visibility:visible;display:block}}
"""
