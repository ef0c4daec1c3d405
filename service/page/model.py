"""The view model of the protocol page: plain dataclasses, built from the artifacts by ``builder``, rendered by
the templates in ``service/templates/protocol/``."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.page.text import Inline, Rich


@dataclass(frozen=True)
class Link:
    """A link: internal (``#anchor``), to an artifact, or to a citation."""
    text: str
    href: str
    title: str = ""


@dataclass(frozen=True)
class Evidence:
    """The grading of a recommendation: direction (code and label), strength and quality."""
    direction: str = ""
    direction_code: str = ""
    strength: str = ""
    quality: str = ""


@dataclass(frozen=True)
class Citation:
    """A cited source: short label, title, full reference and address."""
    label: str
    display: str
    detail: str
    url: str


@dataclass(frozen=True)
class Coded:
    """A code with its display and the short name of its system."""
    display: str
    system: str
    code: str


@dataclass(frozen=True)
class Badge:
    """The protocol code of an action; ``rule`` when it names a rule, linked to the rule's row."""
    code: str
    display: str
    rule: bool
    href: str = ""


@dataclass
class Fact:
    """A labelled fact of an order: text, or codes."""
    label: str
    text: str = ""
    codes: list[Coded] = field(default_factory=list)


@dataclass
class ArtifactLinks:
    """Where an artifact's JSON is: the raw file (public) and the FHIR API (may ask for a token)."""
    json: str
    fhir: str


@dataclass
class Order:
    """The order an action proposes, changes or removes, from its ActivityDefinition."""
    verb: str
    link: Link
    kind: str
    description: Rich
    facts: list[Fact]
    artifact: ArtifactLinks | None


@dataclass
class Overrides:
    """The reasons a clinician can give for overriding a card."""
    link: Link | None
    reasons: list[str]


@dataclass
class Raised:
    """A card shown with a higher indicator when one of ``because`` (rules of its parts) applies."""
    indicator: str
    because: list[Badge]


@dataclass
class ActionView:
    """A card (a top-level action) or a part of one, such as a recommendation, with everything a clinician needs."""
    id: str
    title: str
    card: bool = False
    indicator: str = ""
    when: str = ""
    badges: list[Badge] = field(default_factory=list)
    action_type: str = ""
    text: Rich = field(default_factory=list)
    card_text: Inline = field(default_factory=list)
    suggestion: str = ""
    raised: list[Raised] = field(default_factory=list)
    held_back: list[Link] = field(default_factory=list)
    evidence: Evidence | None = None
    rationale: Rich = field(default_factory=list)
    order: Order | None = None
    citations: list[Citation] = field(default_factory=list)
    overrides: Overrides | None = None
    children: list[ActionView] = field(default_factory=list)


@dataclass
class PhaseView:
    """One phase: its window and its recommendations."""
    id: str
    title: str
    window: str
    text: Rich
    recommendations: list[ActionView]


@dataclass
class Label:
    """A text of the time line picture at a position."""
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass
class Band:
    """One phase on the time line: a rectangle, or an arrow (``path``) for an open-ended phase."""
    action_id: str
    css: str
    tooltip: str
    x: float
    y: float
    width: float
    height: float
    path: str
    head: Label
    lines: list[Label]


@dataclass
class Tick:
    """A boundary between phases on the time line."""
    x: float
    y1: float
    y2: float
    label: Label


@dataclass
class Timeline:
    """The phases as bands on a logarithmic time axis (so that the first hours stay visible)."""
    width: int
    height: int
    title: str
    desc: str
    bands: list[Band]
    ticks: list[Tick]


@dataclass
class RuleEffect:
    """What a rule does on one card: the card's indicator, the action, the card it is part of, what it suggests."""
    indicator: str
    link: Link
    part_of: Link | None
    raised: list[str]
    fixes: list[str]


@dataclass
class RuleCell:
    """A rule's effects on one plan's cards (``empty``: what to say when there are none)."""
    effects: list[RuleEffect]
    empty: str


@dataclass
class RuleRow:
    """One safety rule in the table."""
    code: str
    anchor: str
    display: str
    definition: str
    logic: list[Link]
    valuesets: list[Link]
    evidence: list[Evidence]
    citations: list[Citation]
    cells: list[RuleCell]


@dataclass
class ValueSetRef:
    """A ValueSet a rule reads, with its size and the displays of its codes."""
    link: Link
    total: int
    artifact: ArtifactLinks
    displays: list[str]


@dataclass
class HookCards:
    """The cards of a rule on some hooks."""
    when: str
    effects: list[RuleEffect]


@dataclass
class HeldBack:
    """The cards of one plan that a suspending rule holds back."""
    when: str
    plan: Link
    every_other: bool
    cards: list[Link]


@dataclass
class SuspensionView:
    """A rule that suspends the protocol, shown before everything else."""
    anchor: str
    code: str
    label: str
    definition: str
    finding: str
    finding_link: Link | None
    valuesets: list[ValueSetRef]
    evidence: list[Evidence]
    citations: list[Citation]
    rationale: Rich
    cards_by_hook: list[HookCards]
    held_back: list[HeldBack]
    cards: list[ActionView]


@dataclass
class CardGroup:
    """Cards under one heading, with an introduction."""
    id: str
    title: str
    intro: Rich
    cards: list[ActionView]


@dataclass
class PlanTech:
    """A PlanDefinition for implementers: its full description, purpose and usage, its hooks and links."""
    link: Link
    hooks: list[str]
    description: Rich
    purpose: Rich
    usage: Rich
    artifact: ArtifactLinks


@dataclass
class ArtifactRow:
    """One artifact in the table of artifacts."""
    row_id: str
    type: str
    id: str
    title: str
    version: str
    status: str
    artifact: ArtifactLinks


@dataclass
class CodeFilter:
    """A code filter of a data requirement: the element and the ValueSet or codes it must be in."""
    path: str
    valuesets: list[Link]
    codes: list[Coded]


@dataclass
class DataRequirementView:
    """One kind of data the protocol reads."""
    id: str
    type: str
    filters: list[CodeFilter]
    dates: list[str]


@dataclass
class ParameterView:
    """An input of the logic (the ordering hooks' draft orders)."""
    name: str
    use: str
    cardinality: str
    type: str
    documentation: str


@dataclass
class FindingView:
    """A named finding of the Library: its description, where it is used and its expression."""
    name: str
    description: str
    used_by: list[Link]
    language: str
    expression: Inline


@dataclass
class TerminologyView:
    """A CodeSystem or ValueSet: facts, description and (when small) its codes."""
    anchor: str
    title: str
    url: str
    artifact: ArtifactLinks
    description: Rich
    facts: str
    joins: list[Link]
    codes: list[Coded]
    concepts: list[tuple[str, str, str]]
    json_only: int


@dataclass
class ActionLogic:
    """The expressions of one action: its conditions and the values it takes from the record."""
    link: Link
    conditions: list[tuple[str, Inline]]
    values: list[tuple[str, Inline]]


@dataclass
class PlanLogic:
    """The expressions of every action of one plan."""
    title: str
    actions: list[ActionLogic]


@dataclass
class NavItem:
    """An entry of the table of contents."""
    id: str
    label: str
    children: list[NavItem] = field(default_factory=list)


@dataclass
class ProtocolPage:
    """Everything the page template shows."""
    title: str
    version: str
    lead: Rich
    meta: list[tuple[str, str]]
    publication: list[tuple[str, str]]
    nav: list[NavItem]
    suspensions: list[SuspensionView]
    rule_columns: list[str]
    rules: list[RuleRow]
    plan_card: ActionView | None
    plan_intro: Rich
    timeline: Timeline | None
    phases: list[PhaseView]
    plan_parts: list[ActionView]
    plan_variants: list[ActionView]
    chart_cards: CardGroup | None
    order_groups: list[CardGroup]
    references: list[Citation]
    plans: list[PlanTech]
    artifacts: list[ArtifactRow]
    data_requirements: list[DataRequirementView]
    parameters: list[ParameterView]
    findings: list[FindingView]
    terminology: list[TerminologyView]
    logic: list[PlanLogic]
    artifact_count: int
    protocols: list[Link] = field(default_factory=list)  #: the protocols the service offers, when there are several
