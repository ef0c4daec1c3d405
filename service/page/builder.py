"""Building the protocol page's view model from one Content.

``ProtocolReading`` (``logic``) finds what the page needs in the artifacts; ``PageBuilder`` turns it into the
dataclasses of ``model``: the rules that suspend the protocol, the safety rules table, the phases with their time
line, the cards of each hook, the references, and the technical view for implementers (artifacts, data
requirements, named findings, the expressions of every action, the terminology).
"""

from __future__ import annotations

import math

from protocol.engine.content import TYPE_ORDER, Content
from service.cds_hooks.cards import EXT_DIRECTION, EXT_QUALITY, EXT_RATIONALE, EXT_STRENGTH, OVERRIDE_SUFFIX
from service.page.logic import (
    VARIABLE_REF,
    Json,
    Phase,
    ProtocolReading,
    Suspension,
    children,
    codings,
    concept_code,
    concept_label,
    concepts_of,
    condition_expressions,
    duration_label,
    extension,
    fhirpath_literal,
    hooks_of,
    hours,
    indicator_of,
    split_concatenation,
    split_top_level,
    strip_parentheses,
    walk,
    window_label,
)
from service.page.model import (
    ActionLogic,
    ActionView,
    ArtifactLinks,
    ArtifactRow,
    Badge,
    Band,
    CardGroup,
    Citation,
    Coded,
    CodeFilter,
    DataRequirementView,
    Evidence,
    Fact,
    FindingView,
    HeldBack,
    HookCards,
    Label,
    Link,
    NavItem,
    Order,
    Overrides,
    ParameterView,
    PhaseView,
    PlanLogic,
    PlanTech,
    ProtocolPage,
    Raised,
    RuleCell,
    RuleEffect,
    RuleRow,
    SuspensionView,
    TerminologyView,
    Tick,
    Timeline,
    ValueSetRef,
)
from service.page.text import Inline, Span, clinical, hooks_phrase, kind_words, markdown, sentence_case, without_source_references, wrap

CODES_SHOWN = 60  #: larger ValueSets are summarised; their codes are in the JSON

#: Short names of the external code systems the artifacts use (labels only; anything else shows its title or URL).
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

#: What an action of each type does, in words.
ACTION_TYPES = {"create": "creates an order", "update": "changes an existing order", "remove": "removes a drafted order"}

#: ActivityDefinition values (dynamicValue paths) that read as plain facts of an order.
ORDER_VALUES = {"patientInstruction": "Patient instruction", "status": "Sets status", "statusReason.text": "Reason given"}


class PageBuilder:
    """Builds the view model of the protocol page from one Content."""

    def __init__(self, content: Content, root: str = "", protocols: list[Link] | None = None):
        self.read = ProtocolReading(content)
        self.content = content
        self.root = root                    #: prefix of the relative links to the service's other routes ("../" below /protocol/)
        self.protocols = protocols or []    #: the protocols the service offers, when there are several

    # links and small pieces ---------------------------------------------------------------------------------------------
    @staticmethod
    def anchor(resource: Json) -> str:
        """The page anchor of an artifact: ``Type-id``."""
        return f"{resource['resourceType']}-{resource.get('id', '')}"

    def artifact_links(self, resource: Json) -> ArtifactLinks:
        """Relative links to an artifact's JSON, so that they resolve the same from ``/`` and ``/protocol`` (and, with
        the root ``../``, from ``/protocol/{name}``)."""
        return ArtifactLinks(f"{self.root}protocol/artifacts/{resource['resourceType']}-{resource.get('id', '')}.json",
                             f"{self.root}fhir/{resource['resourceType']}/{resource.get('id', '')}")

    def artifact_link(self, canonical: str | None, resource_type: str | None = None) -> Link:
        """A link to the page's entry for a canonical; the canonical as text when it does not resolve."""
        resource = self.read.resolve(canonical, resource_type)
        if resource is None:
            return Link(str(canonical or ""), "")
        return Link(str(resource.get("title") or resource.get("name") or resource.get("id")), f"#{self.anchor(resource)}")

    def finding_link(self, name: str, text: str | None = None) -> Link | None:
        """A link to a Library finding's entry for implementers, else None."""
        return Link(text or f"%{name}", f"#finding-{name}") if name in self.read.variables else None

    def system_name(self, system: str | None) -> str:
        """The short name of a code system."""
        if not system:
            return ""
        if system in SYSTEM_NAMES:
            return SYSTEM_NAMES[system]
        resource = self.read.resolve(system)
        return str(resource.get("title") or resource.get("name")) if resource else system

    def coded(self, coding: Json) -> Coded:
        """A coding with its display (the CodeSystem's, else the coding's) and system name."""
        display = self.read.concept_of(coding).get("display") or coding.get("display") or ""
        return Coded(str(display), self.system_name(coding.get("system")), str(coding.get("code") or ""))

    def badges(self, action: Json) -> list[Badge]:
        """The protocol codes of an action; rule codes link to the rule's row."""
        out = []
        for coding in self.read.rule_codes(action):
            rule = self.read.is_rule(coding)
            display = str(self.read.concept_of(coding).get("display") or coding.get("display") or "")
            out.append(Badge(str(coding["code"]), display, rule, f"#rule-{coding['code']}" if rule else ""))
        return out

    @staticmethod
    def evidence(action: Json) -> Evidence | None:
        """The grading of an action, else None."""
        strength, quality, direction = (extension(action, url) for url in (EXT_STRENGTH, EXT_QUALITY, EXT_DIRECTION))
        if not (strength or quality or direction):
            return None
        return Evidence(concept_label(direction) or "", concept_code(direction) or "", concept_label(strength) or "",
                        concept_label(quality) or "")

    @staticmethod
    def citations(actions: list[Json], key: str = "documentation") -> list[Citation]:
        """The citations of some actions (or artifacts' ``relatedArtifact``), each once by URL (else label), in order."""
        found: dict[str, Citation] = {}
        for action in actions:
            for doc in action.get(key) or []:
                if isinstance(doc, dict) and doc.get("type") == "citation":
                    label = str(doc.get("label") or doc.get("display") or doc.get("url") or "citation")
                    found.setdefault(str(doc.get("url") or label), Citation(label, str(doc.get("display") or label),
                                                                            str(doc.get("citation") or ""), str(doc.get("url") or "")))
        return list(found.values())

    def slot_title(self, name: str) -> str:
        """What a gap of a card text stands for: the finding's description."""
        return without_source_references(str((self.read.variables.get(name) or {}).get("description") or ""))

    def card_text(self, action: Json) -> Inline:
        """The card text an action computes from the record, as text with gaps; empty when it is not such a text."""
        for dv in action.get("dynamicValue") or []:
            expression = (dv.get("expression") or {}).get("expression") if isinstance(dv, dict) else None
            if dv.get("path") not in ("action.description", "description") or not isinstance(expression, str):
                continue
            pieces = [self.text_piece(piece) for piece in split_concatenation(expression)]
            return pieces if any(p.kind == "text" and p.text.strip() for p in pieces) else []
        return []

    def text_piece(self, piece: str) -> Span:
        """One operand of a card text: a literal as text, ``iif(condition, 'text', '')`` as text added when it applies,
        anything else as a gap filled in from the record (described by the first finding it names)."""
        text = fhirpath_literal(piece)
        if text is not None:
            return Span(text)
        call = strip_parentheses(piece)
        if call.startswith("iif(") and call.endswith(")"):
            arguments = split_top_level(call[4:-1], ",")
            then = fhirpath_literal(arguments[1]) if len(arguments) >= 2 else None
            otherwise = arguments[2].strip() if len(arguments) == 3 else "{}"
            if then and otherwise in ("{}", "''", '""'):
                return Span(then, "optional", title="Added when it applies")
        names = VARIABLE_REF.findall(piece)
        return Span("from the record", "slot", title=self.slot_title(names[0]) if names else "")

    def order(self, action: Json) -> Order | None:
        """The ActivityDefinition an action proposes: kind, codes, dosage, instructions and plain fixed values."""
        canonical = action.get("definitionCanonical")
        if not canonical:
            return None
        types = codings(action.get("type"))
        verb = {"update": "Changes", "remove": "Removes"}.get(str(types[0].get("code")) if types else "", "Proposes")
        definition = self.read.resolve(canonical, "ActivityDefinition")
        if definition is None:
            return Order(verb, Link(str(canonical), ""), "", [], [], None)
        facts = []
        found = codings(definition.get("code")) + codings(definition.get("productCodeableConcept"))
        if found:
            facts.append(Fact("Code" if len(found) == 1 else "Codes", codes=[self.coded(c) for c in found]))
        for dosage in definition.get("dosage") or []:
            if dosage.get("text"):
                facts.append(Fact("Dosage", str(dosage["text"])))
            if dosage.get("patientInstruction"):
                facts.append(Fact("Patient instruction", str(dosage["patientInstruction"])))
        for dv in definition.get("dynamicValue") or []:
            text = fhirpath_literal(str((dv.get("expression") or {}).get("expression") or ""))
            if text is not None and dv.get("path") in ORDER_VALUES:
                facts.append(Fact(ORDER_VALUES[dv["path"]], text))
        return Order(verb, self.artifact_link(canonical, "ActivityDefinition"), kind_words(definition.get("kind")),
                     markdown(clinical(definition.get("description"))), facts, self.artifact_links(definition))

    def overrides(self, action: Json) -> Overrides | None:
        """The override reasons of a card, from the ValueSet its extension names."""
        canonical = (extension(action, OVERRIDE_SUFFIX) or {}).get("valueCanonical")
        if not canonical:
            return None
        valueset = self.read.resolve(canonical, "ValueSet")
        reasons = [str(c.get("display") or c.get("code")) for c in ((valueset or {}).get("expansion") or {}).get("contains") or []
                   if c.get("display") or c.get("code")]
        return Overrides(self.artifact_link(canonical, "ValueSet"), reasons)

    def held_back_note(self, action: Json) -> list[Link]:
        """The rules that suspend the protocol and so keep this card from being given."""
        held = self.read.held_back_by(action)
        return [Link(s.label, f"#{s.anchor}") for s in self.read.suspensions if s.finding in held and s.card is not action]

    def raised(self, card: Json) -> list[Raised]:
        """The higher indicators a card can take, with the rules of the parts that raise it."""
        out = []
        for raise_ in self.read.raises(card):
            because = list(dict.fromkeys(b for part in raise_.parts for b in self.badges(part) if b.rule))
            out.append(Raised(raise_.indicator, because))
        return out

    # actions -------------------------------------------------------------------------------------------------------------
    def action(self, action: Json, card: bool = False, with_children: bool = True) -> ActionView:
        """A card or a part of one."""
        types = codings(action.get("type"))
        type_code = str(types[0].get("code")) if types else ""
        return ActionView(
            id=str(action.get("id") or ""),
            title=str(action.get("title") or action.get("id") or ""),
            card=card,
            indicator=indicator_of(action) if card else "",
            when=f"Shown when {hooks_phrase(hooks_of(action))}" if card and hooks_of(action) else "",
            badges=self.badges(action),
            action_type=ACTION_TYPES.get(type_code, type_code) if not card else "",
            text=markdown(clinical(action.get("description"))),
            card_text=self.card_text(action),
            suggestion=str(action.get("textEquivalent") or "") if card else "",
            raised=self.raised(action) if card else [],
            held_back=self.held_back_note(action) if card else [],
            evidence=self.evidence(action),
            rationale=markdown(clinical((extension(action, EXT_RATIONALE) or {}).get("valueMarkdown"))),
            order=self.order(action),
            citations=self.citations([action]),
            overrides=self.overrides(action) if card else None,
            children=[self.action(c) for c in children(action)] if with_children else [],
        )

    def effect(self, action: Json) -> RuleEffect:
        """What a rule's action does: its card's indicator, the card it belongs to, and the fixes it suggests."""
        card = self.read.card_of.get(action.get("id", ""), action)
        part_of = None if card is action else Link(str(card.get("title") or card.get("id")), f"#{card.get('id')}")
        fixes = [str(c["title"]) for c in children(action) if c.get("title")]
        return RuleEffect(indicator_of(card), Link(str(action.get("title") or action.get("id")), f"#{action.get('id')}"),
                          part_of, self.read.raised_by(card, action) if card is not action else [], fixes)

    # sections -------------------------------------------------------------------------------------------------------------
    def valueset_ref(self, canonical: str) -> ValueSetRef:
        """A ValueSet a rule reads, with the displays of its codes."""
        valueset = self.read.resolve(canonical, "ValueSet")
        if valueset is None:
            return ValueSetRef(Link(canonical, ""), 0, ArtifactLinks("", ""), [])
        expansion = valueset.get("expansion") or {}
        contains = expansion.get("contains") or []
        displays = list(dict.fromkeys(str(c.get("display") or c.get("code")) for c in contains if c.get("display") or c.get("code")))
        displays = displays if len(displays) <= CODES_SHOWN else []
        return ValueSetRef(self.artifact_link(canonical, "ValueSet"), int(expansion.get("total", len(contains))),
                           self.artifact_links(valueset), displays)

    def suspension(self, rule: Suspension) -> SuspensionView:
        """A rule that suspends the protocol: when, evidence, the cards it gives and the cards it holds back."""
        groups: dict[tuple[str, ...], list[Json]] = {}
        for action in rule.actions:
            card = self.read.card_of.get(action.get("id", ""), action)
            groups.setdefault(tuple(hooks_of(card)), []).append(action)
        by_hook = [HookCards(f"When {hooks_phrase(list(h))}" if h else "Not tied to a hook", [self.effect(a) for a in actions])
                   for h, actions in groups.items()]
        held: list[HeldBack] = []
        for plan in [rule.plan] + [p for p in self.read.plans if p is not rule.plan]:
            tops = [a for a in plan.get("action") or [] if isinstance(a, dict) and all(a is not r for r in rule.actions)]
            cards = [a for a in tops if rule.finding in self.read.held_back_by(a)]
            if cards:
                hooks = list(dict.fromkeys(h for a in cards for h in hooks_of(a)))
                held.append(HeldBack(f"When {hooks_phrase(hooks)}" if hooks else str(plan.get("title") or plan.get("id")),
                                     Link(str(plan.get("title") or plan.get("id")), f"#{self.anchor(plan)}"), len(cards) == len(tops),
                                     [Link(str(a.get("title") or a.get("id")), f"#{a.get('id')}") for a in cards]))
        variable = self.read.variables.get(rule.finding, {})
        cards = [a for a in rule.actions if self.read.card_of.get(a.get("id", "")) is a]
        rationales = [text for a in rule.actions if (text := (extension(a, EXT_RATIONALE) or {}).get("valueMarkdown"))]
        return SuspensionView(
            anchor=rule.anchor, code=str(rule.coding.get("code") or ""), label=rule.label,
            definition=clinical(rule.concept.get("definition")), finding=clinical(variable.get("description")),
            finding_link=self.finding_link(rule.finding, "how it is computed"),
            valuesets=[self.valueset_ref(v) for v in self.read.finding_valuesets(rule.finding)],
            evidence=list(dict.fromkeys(e for a in rule.actions if (e := self.evidence(a)))),
            citations=self.citations(rule.actions),
            rationale=markdown(clinical(next(iter(rationales), ""))),
            cards_by_hook=by_hook, held_back=held, cards=[self.action(a, card=True) for a in cards])

    def column_label(self, plan: Json) -> str:
        """The heading of a plan's column in the rule table: when its cards are shown, else its title."""
        hooks = self.plan_hooks(plan)
        return f"When {hooks_phrase(hooks)}" if hooks else str(plan.get("title") or plan.get("id"))

    def rule_columns(self) -> list[Json]:
        """The plans whose cards the rule table shows, one column each: the pathway first."""
        return [p for p in [self.read.pathway, *self.read.others] if p]

    def logic_links(self, findings: list[str]) -> list[Link]:
        """Links to the findings behind a rule for implementers: 'logic', numbered when there are several."""
        known = [n for n in findings if n in self.read.variables]
        return [Link("logic" if len(known) == 1 else f"logic {i}", f"#finding-{n}", self.slot_title(n)) for i, n in enumerate(known, 1)]

    def rule_rows(self) -> list[RuleRow]:
        """Every safety rule: what it checks, what it reads, its evidence, and its cards on each plan."""
        rows = []
        columns = self.rule_columns()
        for coding, concept, actions in self.read.rules():
            findings = self.read.tested_findings(actions)
            valuesets = list(dict.fromkeys(v for n in findings for v in self.read.finding_valuesets(n)))
            cells = []
            for plan in columns:
                mine = [a for a in actions if self.read.plan_of.get(a.get("id", "")) is plan]
                cells.append(RuleCell([self.effect(a) for a in mine], "No card"))
            rows.append(RuleRow(
                code=str(coding["code"]), anchor=f"rule-{coding['code']}", display=str(concept.get("display") or ""),
                definition=clinical(concept.get("definition")),
                logic=self.logic_links(findings),
                valuesets=[self.artifact_link(v, "ValueSet") for v in valuesets],
                evidence=list(dict.fromkeys(e for a in actions if (e := self.evidence(a)))),
                citations=self.citations(actions), cells=cells))
        return rows

    def timeline(self, phases: list[Phase]) -> Timeline | None:
        """The phases as bands on a logarithmic time axis, with the boundaries marked."""
        if not phases:
            return None
        width, margin, top, band_h, line_h, font = 960, 16, 34, 56, 17, 13
        last = max([p.high for p in phases if p.high is not None] + [p.low for p in phases])
        end = max(last * 2, last + 24) if any(p.high is None for p in phases) else last

        def x(value: float) -> float:
            return margin + (width - 2 * margin) * math.log1p(value / 24) / math.log1p(end / 24)

        bands, descriptions, max_lines = [], [], 1
        for index, phase in enumerate(phases):
            title = str(phase.action.get("title") or phase.action.get("id") or "")
            head, _, tail = title.partition(": ")
            head, tail = (head, tail) if tail else (title, "")
            x0, x1 = x(phase.low), x(phase.high if phase.high is not None else end)
            window = window_label(phase.low, phase.high)
            descriptions.append(f"{title}: {window}.")
            path = "" if phase.high is not None else (f"M{x0 + 1:.1f} {top} H{x1 - 18:.1f} L{x1:.1f} {top + band_h / 2} "
                                                     f"L{x1 - 18:.1f} {top + band_h} H{x0 + 1:.1f} Z")
            centre = round((x0 + x1 - (18 if phase.high is None else 0)) / 2, 1)
            lines = wrap(tail, max(8, int((x1 - x0 - 8) / (font * 0.56))))
            max_lines = max(max_lines, len(lines))
            bands.append(Band(str(phase.action.get("id") or ""), f"band-{index % 4}", f"{title}: {window}", round(x0 + 1, 1), top,
                              round(max(x1 - x0 - 2, 1), 1), band_h, path, Label(centre, top + band_h / 2 + 5, head),
                              [Label(centre, top + band_h + 20 + n * line_h, line) for n, line in enumerate(lines)]))
        ticks = []
        for value in sorted({p.low for p in phases} | {p.high for p in phases if p.high is not None}):
            tx = round(x(value), 1)
            ticks.append(Tick(tx, top - 8, top + band_h, Label(tx, top - 13, "onset" if value == 0 else duration_label(value),
                                                               "start" if tx < margin + 4 else "middle")))
        title = "Phases of care by time since onset"
        return Timeline(width, top + band_h + 20 + max_lines * line_h + 4, title,
                        " ".join(descriptions) + " The time axis is logarithmic.", bands, ticks)

    def phases(self, phases: list[Phase]) -> list[PhaseView]:
        """Each phase with its window and recommendations."""
        return [PhaseView(str(p.action.get("id") or ""), str(p.action.get("title") or p.action.get("id") or ""),
                          sentence_case(window_label(p.low, p.high)), markdown(clinical(p.action.get("description"))),
                          [self.action(c) for c in children(p.action)]) for p in phases]

    def chart_cards(self) -> CardGroup | None:
        """The pathway's cards other than the plan, its variants and the suspending rules."""
        pathway = self.read.pathway
        if not pathway:
            return None
        elsewhere = self.read.shown_elsewhere()
        cards = [a for a in pathway.get("action") or [] if isinstance(a, dict) and id(a) not in elsewhere]
        if not cards:
            return None
        hooks = list(dict.fromkeys(h for a in cards for h in hooks_of(a)))
        other = "Other cards" if self.read.phase_group(pathway) or self.read.suspensions else "Cards"  # beside a plan, or alone
        title = f"{other} when {hooks_phrase(hooks)}" if hooks else f"{other} of the pathway"
        return CardGroup("patient-view-cards", title, markdown(clinical(pathway.get("usage"))),
                         [self.action(a, card=True) for a in cards])

    def order_groups(self) -> list[CardGroup]:
        """The cards of the other plans, named by their hooks: safety rules first, then the rest, each plan with its
        clinical description."""
        groups = []
        elsewhere = self.read.shown_elsewhere()
        for plan in self.read.others:
            cards = [a for a in plan.get("action") or [] if isinstance(a, dict) and id(a) not in elsewhere]
            rules = [a for a in cards if self.read.is_rule_card(a)]
            rest = [a for a in cards if not self.read.is_rule_card(a)]
            hooks = self.plan_hooks(plan)
            when = f"when {hooks_phrase(hooks)}" if hooks else f"of {plan.get('title') or plan.get('id')}"
            intro = markdown(clinical(plan.get("description")))
            if rules:
                groups.append(CardGroup(f"{plan.get('id')}-rules", f"Safety rules {when}", intro, [self.action(a, card=True) for a in rules]))
                intro = []
            if rest:
                title = f"Other cards {when}" if rules else sentence_case(f"cards {when}")
                groups.append(CardGroup(f"{plan.get('id')}-cards", title, intro, [self.action(a, card=True) for a in rest]))
        return groups

    def references(self) -> list[Citation]:
        """Every source cited by the plans and their actions, each once, by label."""
        actions = [a for plan in self.read.plans for a in walk(plan.get("action") or [])]
        found = self.citations(self.read.plans, key="relatedArtifact") + self.citations(actions)
        unique = {c.url or c.label: c for c in reversed(found)}
        return sorted(unique.values(), key=lambda c: c.label.lower())

    # for implementers --------------------------------------------------------------------------------------------------------
    def expression(self, text: str) -> Inline:
        """An expression as spans, each ``%name`` of a Library finding linked to its entry."""
        spans, start = [], 0
        for match in VARIABLE_REF.finditer(text):
            if match.group(1) in self.read.variables:
                if match.start() > start:
                    spans.append(Span(text[start:match.start()]))
                spans.append(Span(match.group(0), "link", href=f"#finding-{match.group(1)}"))
                start = match.end()
        if start < len(text):
            spans.append(Span(text[start:]))
        return spans

    def plans_tech(self) -> list[PlanTech]:
        """Each PlanDefinition with its full description, purpose and usage."""
        return [PlanTech(Link(str(p.get("title") or p.get("id")), f"#{self.anchor(p)}"),
                         list(dict.fromkeys(h for a in p.get("action") or [] if isinstance(a, dict) for h in hooks_of(a))),
                         markdown(without_source_references(str(p.get("description") or ""))), markdown(p.get("purpose")),
                         markdown(p.get("usage")), self.artifact_links(p)) for p in self.read.plans]

    def artifacts(self) -> list[ArtifactRow]:
        """Every loaded artifact in dependency order; ValueSets and CodeSystems have their anchor in the terminology."""
        order = {t: i for i, t in enumerate(TYPE_ORDER)}
        rows = []
        for resource in sorted(self.content.resources, key=lambda r: (order.get(r["resourceType"], len(order)), str(r.get("id", "")))):
            anchor = self.anchor(resource)
            row_id = f"artifact-{anchor}" if resource["resourceType"] in ("ValueSet", "CodeSystem") else anchor
            rows.append(ArtifactRow(row_id, resource["resourceType"], str(resource.get("id") or ""),
                                    str(resource.get("title") or resource.get("name") or ""), str(resource.get("version") or ""),
                                    str(resource.get("status") or ""), self.artifact_links(resource)))
        return rows

    def date_filter(self, df: Json) -> str:
        """A date filter of a data requirement in words."""
        path = str(df.get("path") or df.get("searchParam") or "")
        if isinstance(df.get("valueDuration"), dict):
            value = hours(df["valueDuration"])
            amount = duration_label(value) if value is not None else f'{df["valueDuration"].get("value")} {df["valueDuration"].get("unit")}'
            return f"{path} within the last {amount}"
        if isinstance(df.get("valuePeriod"), dict):
            return f'{path} from {df["valuePeriod"].get("start", "…")} to {df["valuePeriod"].get("end", "…")}'
        if df.get("valueDateTime"):
            return f'{path} on or after {df["valueDateTime"]}'
        return path

    def data_requirements(self) -> list[DataRequirementView]:
        """The data the Library reads, with code and date filters."""
        out = []
        for dr in (self.read.library or {}).get("dataRequirement") or []:
            filters = [CodeFilter(str(cf.get("path") or cf.get("searchParam") or ""),
                                  [self.artifact_link(cf["valueSet"], "ValueSet")] if cf.get("valueSet") else [],
                                  [self.coded(c) for c in cf.get("code") or []]) for cf in dr.get("codeFilter") or []]
            out.append(DataRequirementView(str(dr.get("id") or ""), str(dr.get("type") or ""), filters,
                                           [self.date_filter(df) for df in dr.get("dateFilter") or []]))
        return out

    def parameters(self) -> list[ParameterView]:
        """The Library's parameters (inputs of the ordering hooks)."""
        return [ParameterView(str(p.get("name") or ""), str(p.get("use") or ""), f'{p.get("min", "")}..{p.get("max", "")}',
                              str(p.get("type") or ""), str(p.get("documentation") or ""))
                for p in (self.read.library or {}).get("parameter") or []]

    def findings(self) -> list[FindingView]:
        """The Library's named findings with the actions and findings that use them."""
        used_by: dict[str, list[Link]] = {}
        for plan in self.read.plans:
            for action in walk(plan.get("action") or []):
                values = [(d.get("expression") or {}).get("expression") for d in action.get("dynamicValue") or []]
                expressions = condition_expressions(action) + values
                for name in sorted({n for e in expressions if isinstance(e, str) for n in VARIABLE_REF.findall(e)}):
                    used_by.setdefault(name, []).append(Link(str(action.get("id")), f"#{action.get('id')}"))
        for name, variable in self.read.variables.items():
            for ref in sorted(set(VARIABLE_REF.findall(str(variable.get("expression") or ""))) - {name}):
                used_by.setdefault(ref, []).append(Link(f"%{name}", f"#finding-{name}"))
        return [FindingView(name, without_source_references(str(v.get("description") or "")), used_by.get(name, []),
                            str(v.get("language") or "text/fhirpath"), self.expression(str(v.get("expression") or "")))
                for name, v in self.read.variables.items()]

    def terminology(self) -> list[TerminologyView]:
        """The CodeSystems (with their concepts) and ValueSets (with their codes when there are few)."""
        out = []
        for codesystem in self.content.of_type("CodeSystem"):
            concepts = [(str(c.get("code") or ""), str(c.get("display") or ""), str(c.get("definition") or ""))
                        for c in concepts_of(codesystem.get("concept"))]
            out.append(TerminologyView(self.anchor(codesystem), str(codesystem.get("title") or codesystem.get("id")),
                                       str(codesystem.get("url") or ""), self.artifact_links(codesystem),
                                       markdown(codesystem.get("description")), f"{len(concepts)} concepts", [], [], concepts, 0))
        for valueset in self.content.of_type("ValueSet"):
            expansion = valueset.get("expansion") or {}
            contains = expansion.get("contains") or []
            total = expansion.get("total", len(contains))
            includes = (valueset.get("compose") or {}).get("include") or []
            systems = sorted({self.system_name(inc.get("system")) for inc in includes if inc.get("system")})
            facts = f"{total} code{'s' if total != 1 else ''}" + (f" from {', '.join(systems)}" if systems else "")
            small = bool(contains) and len(contains) <= CODES_SHOWN
            out.append(TerminologyView(self.anchor(valueset), str(valueset.get("title") or valueset.get("id")), str(valueset.get("url") or ""),
                                       self.artifact_links(valueset), markdown(valueset.get("description")), facts,
                                       [self.artifact_link(v, "ValueSet") for inc in includes for v in inc.get("valueSet") or []],
                                       [self.coded(c) for c in contains] if small else [], [], 0 if small else len(contains)))
        return out

    def logic(self) -> list[PlanLogic]:
        """Every action's conditions and computed values, plan by plan."""
        out = []
        for plan in self.read.plans:
            actions = []
            for action in walk(plan.get("action") or []):
                conditions = [(str(c.get("kind", "")), self.expression(str((c.get("expression") or {}).get("expression"))))
                              for c in action.get("condition") or [] if isinstance((c.get("expression") or {}).get("expression"), str)]
                values = [(str(d.get("path")), self.expression(str((d.get("expression") or {}).get("expression"))))
                          for d in action.get("dynamicValue") or [] if isinstance((d.get("expression") or {}).get("expression"), str)]
                if conditions or values:
                    actions.append(ActionLogic(Link(str(action.get("id")), f"#{action.get('id')}"), conditions, values))
            if actions:
                out.append(PlanLogic(str(plan.get("title") or plan.get("id")), actions))
        return out

    # the page ----------------------------------------------------------------------------------------------------------------
    def header(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """What the header says of the publication, and the technical facts kept for implementers."""
        pub = self.read.publication
        status = f'{pub["status"]}{" (experimental)" if pub.get("experimental") else ""}' if pub.get("status") else ""
        meta = [("Version", pub.get("version")), ("Status", status), ("Date", pub.get("date")), ("Publisher", pub.get("publisher"))]
        tech = [("Canonical base", pub.get("canonical")), ("FHIR version", pub.get("fhirVersion")), ("Licence", pub.get("license")),
                ("Package", pub.get("packageId"))]
        return [(k, str(v)) for k, v in meta if v], [(k, str(v)) for k, v in tech if v]

    def build(self) -> ProtocolPage:
        """The whole page."""
        read = self.read
        pathway = read.pathway or {}
        group = read.phase_group(read.pathway)
        phases = read.phases()
        meta, publication = self.header()
        suspensions = [self.suspension(s) for s in read.suspensions]
        rules = self.rule_rows()
        chart = self.chart_cards()
        orders = self.order_groups()
        references = self.references()
        phase_views = self.phases(phases)
        plan_card = self.action(group, card=True, with_children=False) if group else None
        first = f"Checked first: {suspensions[0].label}" if len(suspensions) == 1 else "Checked first"
        nav = [NavItem("checked-first", first)] if suspensions else []
        nav += [NavItem("safety-rules", "Safety rules at a glance")] if rules else []
        if plan_card or phase_views:
            nav.append(NavItem("phases", "Phases of care", [NavItem(p.id, p.title) for p in phase_views]))
        nav += [NavItem(chart.id, chart.title)] if chart else []
        nav += [NavItem(g.id, g.title) for g in orders]
        nav += [NavItem("references", "References")] if references else []
        nav.append(NavItem("implementers", "For implementers", [NavItem("artifacts", "Artifacts"), NavItem("logic", "Logic"),
                                                                NavItem("card-logic", "When each card applies"),
                                                                NavItem("terminology", "Terminology")]))
        title = str(read.publication.get("title") or pathway.get("title") or "Protocol")
        return ProtocolPage(
            title=title, version=str(read.publication.get("version") or pathway.get("version") or ""),
            lead=markdown(clinical(pathway.get("description"))), meta=meta, publication=publication, nav=nav,
            suspensions=suspensions, rule_columns=[self.column_label(p) for p in self.rule_columns()],
            rules=rules, plan_card=plan_card, plan_intro=markdown(clinical(pathway.get("purpose"))), timeline=self.timeline(phases),
            phases=phase_views, plan_parts=[self.action(c) for c in children(group or {}) if not c.get("timingRange")],
            plan_variants=[self.action(v, card=True) for v in read.plan_variants()], chart_cards=chart,
            order_groups=orders, references=references, plans=self.plans_tech(), artifacts=self.artifacts(),
            data_requirements=self.data_requirements(), parameters=self.parameters(), findings=self.findings(),
            terminology=self.terminology(), logic=self.logic(), artifact_count=len(self.content.resources),
            protocols=self.protocols)

    @staticmethod
    def plan_hooks(plan: Json) -> list[str]:
        """The hooks of a plan's cards, each once."""
        return list(dict.fromkeys(h for a in plan.get("action") or [] if isinstance(a, dict) for h in hooks_of(a)))


def build_page(content: Content, root: str = "", protocols: list[Link] | None = None) -> ProtocolPage:
    """The view model of the protocol page for the given artifacts (one protocol's); ``root`` prefixes the links to
    the service's other routes, ``protocols`` lists the protocols the service offers when there are several."""
    return PageBuilder(content, root, protocols).build()
