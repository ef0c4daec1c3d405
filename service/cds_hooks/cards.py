"""CDS Hooks cards from the engine's RequestGroup: one card per top-level action (CDS on FHIR mapping).

Nothing clinical is written here: summary, detail, indicator, evidence, links and override reasons all come
from the applied actions and the artifacts they came from.

- summary = action title (under 140 characters); indicator from priority (routine → info, urgent → warning,
  stat and asap → critical; info when absent); source = the protocol (label from the action's documentation,
  url to the protocol page, topic = the action's code); detail = the description, then the applied child
  actions with their evidence (strength, quality, direction, rationale); links = the citations.
- Suggestions: a card whose action has type ``create`` and holds generated requests offers one suggestion that
  creates the CarePlan of those requests (its ``textEquivalent`` is the label); every descendant ``update`` or
  ``remove`` becomes its own suggestion. On other cards each typed child is a suggestion, and a child group of
  typed actions is one suggestion with several actions (for example remove a draft and create two orders).
- Every suggestion has a ``uuid``; the one whose action the content marks ``precheckBehavior: yes`` (preselected)
  has ``isRecommended: true``.
- overrideReasons come from the ValueSet the action names in its ``cds-override-reasons`` extension.

Action titles and descriptions are plain text, and may hold text from the patient's record (a drug's name as the
EHR wrote it). They are made safe where they go: into the markdown ``detail`` with HTML's ``& < >`` as entities and
markdown's punctuation escaped, on one line; into ``summary`` and suggestion labels (plain text) on one line,
without ``<`` or ``>``. So a record cannot add a heading, a link, an image or HTML to a card.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.engine.apply import AppliedAction, ApplyResult
from protocol.engine.content import Content
from protocol.engine.jsondata import copy_json
from protocol.engine.output import careplan_r4

Json = dict[str, Any]
INDICATORS = {"routine": "info", "urgent": "warning", "asap": "critical", "stat": "critical"}
SUMMARY_LIMIT = 140
EXT_STRENGTH = "http://hl7.org/fhir/StructureDefinition/cqf-strengthOfRecommendation"
EXT_QUALITY = "http://hl7.org/fhir/StructureDefinition/cqf-qualityOfEvidence"
EXT_DIRECTION = "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-directionOfRecommendation"
EXT_RATIONALE = "http://hl7.org/fhir/uv/cpg/StructureDefinition/cpg-rationale"
OVERRIDE_SUFFIX = "/StructureDefinition/cds-override-reasons"
ACTION_TYPES = {"create": "create", "update": "update", "remove": "delete"}
#: The card extension (CDS Hooks 2.0 ``extension``, a namespaced key) naming the draft order a card is about.
DRAFT_ORDER_EXTENSION = "org.example.back-spasm-cds.draft-order"
#: One pass over a line: HTML's ``& < >`` as entities, and markdown's punctuation that can start emphasis, code, links,
#: images, headings, tables or strikethrough escaped.
MARKDOWN_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"} | {c: "\\" + c for c in "\\`*_[]#|~"})
#: What makes the start of a line a list item or a thematic break.
LINE_START_MARKER = re.compile(r"^(\d{1,9}(?=[.)])|(?=[-+=]))")


def markdown_text(text: Any) -> str:
    """Plain text as markdown that shows it literally: one line, ``& < >`` as entities, punctuation escaped."""
    line = " ".join(str(text).split()).translate(MARKDOWN_ESCAPES)
    return LINE_START_MARKER.sub(r"\1\\", line)


def override_reason_codes(content: Content, action_id: str) -> set[tuple[str, str]] | None:
    """The (system, code) of the override reasons the card of a top-level action offers; None when the action is
    unknown or offers none."""
    stack = [a for plan in content.of_type("PlanDefinition") for a in plan.get("action") or []]
    while stack:
        action = stack.pop()
        if action.get("id") == action_id:
            reasons = override_reason_codings(content, action)
            return {(r["system"], r["code"]) for r in reasons} if reasons else None
        stack.extend(action.get("action") or [])
    return None


def override_reason_codings(content: Content, fields: Json) -> list[Json]:
    """The override reasons of an action (its fields): the codings of the ValueSet its ``cds-override-reasons``
    extension names, as a card lists them."""
    canonical = (_extension_of(fields, OVERRIDE_SUFFIX) or {}).get("valueCanonical")
    valueset = (content.resolve(canonical, "ValueSet") if canonical else None) or {}
    return [{"system": c["system"], "code": c["code"], "display": c.get("display", c["code"])}
            for c in (valueset.get("expansion") or {}).get("contains") or []]


def draft_reference(draft: Mapping[str, Any] | None) -> Json | None:
    """``{"resourceType", "id", "reference"}`` of a draft order with a type and an id; None otherwise."""
    if not isinstance(draft, Mapping):
        return None
    rtype, rid = draft.get("resourceType"), draft.get("id")
    if not (isinstance(rtype, str) and isinstance(rid, str) and rid):
        return None
    return {"resourceType": rtype, "id": rid, "reference": f"{rtype}/{rid}"}


def plain_line(text: Any) -> str:
    """Plain text for fields shown as text (summary, labels): one line, no control characters, no ``<`` or ``>``."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text) if c not in "<>").split())


@dataclass
class IssuedCard:
    """What was shown, kept so that feedback can be joined to it: the protocol's ids and codes only. Never the summary or
    a suggestion's label, since they can quote the patient's record (a drug's name as the EHR wrote it)."""

    uuid: str
    action_id: str
    topic: str | None
    indicator: str
    suggestions: list[str] = field(default_factory=list)  #: the uuid of each suggestion


def _type(action: AppliedAction) -> str | None:
    codings = ((action.fields.get("type") or {}).get("coding")) or []
    return codings[0].get("code") if codings else None


def _extension(action: AppliedAction, url: str) -> Any:
    return _extension_of(action.fields, url)


def _extension_of(fields: Json, url: str) -> Any:
    """The extension of an action with this url (a url starting with '/' matches by its end)."""
    for ext in fields.get("extension") or []:
        if ext.get("url") == url or (url.startswith("/") and ext.get("url", "").endswith(url)):
            return ext
    return None


def _walk(actions: list[AppliedAction]) -> Iterator[AppliedAction]:
    for action in actions:
        yield action
        yield from _walk(action.children)


def _display(concept_ext: Any) -> str | None:
    if not concept_ext:
        return None
    codings = (concept_ext.get("valueCodeableConcept") or {}).get("coding") or []
    return codings[0].get("code") if codings else None


def evidence_line(action: AppliedAction) -> str | None:
    """'Strong recommendation for; moderate-quality evidence.' from the action's evidence extensions."""
    strength = _display(_extension(action, EXT_STRENGTH))
    quality = _display(_extension(action, EXT_QUALITY))
    direction = _display(_extension(action, EXT_DIRECTION))
    if not (strength or quality):
        return None
    parts = []
    if strength:
        parts.append(f"{strength.capitalize()} recommendation{' ' + direction if direction else ''}")
    if quality:
        parts.append(f"{quality.replace('-', ' ')}-quality evidence".replace("very low-quality", "very-low-quality"))
    rationale = (_extension(action, EXT_RATIONALE) or {}).get("valueMarkdown")
    text = f"_{'; '.join(parts)}._"
    return f"{text} {rationale}" if rationale else text


def _bullet(action: AppliedAction, depth: int) -> list[str]:
    title = markdown_text(action.fields.get("title", ""))
    description = action.fields.get("description")
    indent = "  " * depth
    line = f"{indent}- **{title.rstrip('.')}.**" + (f" {markdown_text(description)}" if description else "")
    lines = [line]
    evidence = evidence_line(action)
    if evidence:
        lines.append(f"{indent}  {evidence}")
    for child in action.children:
        lines.extend(_bullet(child, depth + 1))
    return lines


class CardBuilder:
    """Turns $apply results into cards for one service."""

    def __init__(self, content: Content, page_url: Callable[[str], str], id_factory: Callable[[], str] | None = None):
        self.content = content
        self.page_url = page_url
        self.new_id = id_factory or (lambda: str(uuid.uuid4()))
        self._reasons: dict[str, list[Json]] = {}

    # -- per card ---------------------------------------------------------------------------------------
    def cards(self, result: ApplyResult, about: Mapping[str, Any] | None = None) -> tuple[list[Json], list[IssuedCard]]:
        """The cards of one $apply result; ``about`` is the draft order the result reviewed (order hooks), which each
        card then names in its extension, so that the EHR can show the card on that order's line."""
        cards, issued = [], []
        subject = draft_reference(about)
        for action in result.actions:
            card, record = self.card(action, result)
            if subject:
                card.setdefault("extension", {})[DRAFT_ORDER_EXTENSION] = subject
            cards.append(card)
            issued.append(record)
        return cards, issued

    def card(self, action: AppliedAction, result: ApplyResult) -> tuple[Json, IssuedCard]:
        fields = action.fields
        indicator = INDICATORS.get(fields.get("priority"), "info")
        summary = _summary(fields.get("title") or result.plan.get("title", "Back spasm protocol"))
        card: Json = {"uuid": self.new_id(), "summary": summary, "indicator": indicator, "source": self.source(action, result)}
        detail = self.detail(action)
        if detail:
            card["detail"] = detail
        suggestions = self.suggestions(action, result)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one" if fields.get("selectionBehavior") in ("at-most-one", "exactly-one") and not self._is_plan(action) else "any"
        reasons = self.override_reasons(action)
        if reasons:
            card["overrideReasons"] = reasons
        links = self.links(action)
        if links:
            card["links"] = links
        record = IssuedCard(card["uuid"], fields.get("id", ""), (card["source"].get("topic") or {}).get("code"), indicator,
                            [s["uuid"] for s in suggestions])
        return card, record

    def source(self, action: AppliedAction, result: ApplyResult) -> Json:
        documentation = next((d for d in action.fields.get("documentation") or [] if d.get("type") == "documentation"), None)
        label = (documentation or {}).get("display") or f"{result.plan.get('title')} (version {result.plan.get('version')})"
        source: Json = {"label": label, "url": self.page_url(action.fields.get("id", ""))}
        codings = [c for concept in action.fields.get("code") or [] for c in concept.get("coding") or []]
        if codings:
            source["topic"] = {k: codings[0][k] for k in ("system", "code", "display") if k in codings[0]}
        return source

    def detail(self, action: AppliedAction) -> str:
        parts = []
        if action.fields.get("description"):
            parts.append(markdown_text(action.fields["description"]))
        evidence = evidence_line(action)
        if evidence:
            parts.append(evidence)
        content = [child for child in action.children if self._is_plan(action) or not self._is_suggestion(child)]
        for child in content:
            if child.children and not child.resource:
                heading = f"**{markdown_text(child.fields.get('title', ''))}**"
                if child.fields.get("description"):
                    heading += f"  \n{markdown_text(child.fields['description'])}"
                parts.append(heading)
                parts.append("\n".join(line for grandchild in child.children for line in _bullet(grandchild, 0)))
            else:
                parts.append("\n".join(_bullet(child, 0)))
        return "\n\n".join(p for p in parts if p)

    def links(self, action: AppliedAction) -> list[Json]:
        links, seen = [], set()
        for node in _walk([action]):
            for doc in node.fields.get("documentation") or []:
                if doc.get("type") == "citation" and doc.get("url") and doc["url"] not in seen:
                    seen.add(doc["url"])
                    links.append({"label": doc.get("display") or doc.get("label") or doc["url"], "url": doc["url"], "type": "absolute"})
        return links

    def override_reasons(self, action: AppliedAction) -> list[Json]:
        canonical = (_extension(action, OVERRIDE_SUFFIX) or {}).get("valueCanonical")
        if not canonical:
            return []
        if canonical not in self._reasons:
            self._reasons[canonical] = override_reason_codings(self.content, action.fields)
        return [dict(r) for r in self._reasons[canonical]]

    # -- suggestions -------------------------------------------------------------------------------------
    @staticmethod
    def _is_plan(action: AppliedAction) -> bool:
        return _type(action) == "create" and action.resource is None and any(a.resource for a in _walk(action.children))

    @staticmethod
    def _is_suggestion(action: AppliedAction) -> bool:
        if _type(action) in ACTION_TYPES:
            return True
        return bool(action.children) and all(_type(c) in ACTION_TYPES for c in action.children)

    def suggestions(self, action: AppliedAction, result: ApplyResult) -> list[Json]:
        out = []
        if self._is_plan(action):
            plan_action = self._plan_only(action)
            careplan = careplan_r4(ApplyResult(result.plan, result.subject, result.encounter, result.author, result.now, [plan_action], []),
                                   id_factory=self.new_id)
            careplan.pop("id", None)
            out.append(self._suggestion(action, action.fields.get("textEquivalent") or action.fields.get("title", "Create the care plan"),
                                        [{"type": "create", "description": action.fields.get("textEquivalent") or "Create the care plan",
                                          "resource": careplan}]))
            for node in _walk(action.children):
                if _type(node) in ("update", "remove"):
                    suggestion_action = self._action(node)
                    if suggestion_action:
                        out.append(self._suggestion(node, node.fields.get("title", ""), [suggestion_action]))
            return out
        for child in action.children:
            if _type(child) in ACTION_TYPES:
                single = self._action(child)
                if single:
                    out.append(self._suggestion(child, child.fields.get("title", ""), [single]))
            elif child.children and all(_type(c) in ACTION_TYPES for c in child.children):
                actions = [self._action(c) for c in child.children]
                if actions and all(actions):
                    out.append(self._suggestion(child, child.fields.get("title", ""), actions))
        return out

    def _plan_only(self, action: AppliedAction) -> AppliedAction:
        """The plan's tree without its update/remove actions (they are suggestions of their own)."""
        children = [self._plan_only(c) for c in action.children if _type(c) not in ("update", "remove")]
        return AppliedAction(action.fields, action.resource, children)

    def _suggestion(self, source: AppliedAction, label: str, actions: list[Json]) -> Json:
        """A suggestion with its own uuid (for feedback); the action the protocol marks as preselected
        (``precheckBehavior`` yes) is the recommended one."""
        suggestion: Json = {"label": plain_line(label), "uuid": self.new_id(), "actions": actions}
        if source.fields.get("precheckBehavior") == "yes":
            suggestion["isRecommended"] = True
        return suggestion

    @staticmethod
    def _action(action: AppliedAction) -> Json | None:
        kind = ACTION_TYPES[_type(action)]
        description = plain_line(action.fields.get("title", ""))
        if kind == "delete":
            reference = (action.fields.get("resource") or {}).get("reference")
            return {"type": "delete", "description": description, "resourceId": reference} if reference else None
        if action.resource is None:
            return None
        resource = copy_json(action.resource)
        if kind == "create":
            resource.pop("id", None)
        return {"type": kind, "description": description, "resource": resource}


def _summary(title: str) -> str:
    """A one-line summary under the CDS Hooks limit (cut on a word with an ellipsis if ever too long)."""
    title = plain_line(title)
    if len(title) < SUMMARY_LIMIT:
        return title
    cut = title[: SUMMARY_LIMIT - 2].rsplit(" ", 1)[0]
    return cut + "…"


def response(cards: list[Json]) -> Json:
    """The CDS Hooks response body."""
    return {"cards": cards}
