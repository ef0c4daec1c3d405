"""Text for the protocol page: the artifacts' small markdown subset as pieces, and text said for clinicians.

Nothing here writes HTML: text stays text (``Span`` pieces and ``Block`` paragraphs and lists), so that the
templates' autoescaping is the only escaping. For the clinical part of the page, text from the artifacts is
shown without the sentences that describe the machinery (a sentence naming PlanDefinitions, dynamicValues or
CDS Hooks is for implementers), with "on <hook>" said as the moment the clinician meets it, and without
references to the sections of a source document the page does not publish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: The standard CDS Hooks hooks as the moment a clinician meets them ("<subject> is <verb>").
HOOK_WORDS = {
    "patient-view": ("the chart", "opened"),
    "order-select": ("an order", "selected"),
    "order-sign": ("an order", "signed"),
    "order-dispatch": ("an order", "dispatched"),
    "encounter-start": ("an encounter", "started"),
    "encounter-discharge": ("a patient", "discharged"),
    "appointment-book": ("an appointment", "booked"),
}

#: A sentence that describes the machinery rather than the care: left out of the clinical part of the page.
TECHNICAL = re.compile(r"\b(?:PlanDefinitions?|ActivityDefinitions?|dynamicValues?|top-level actions?|CDS Hooks|FHIRPath|"
                       r"resource types?|RequestGroups?)\b")

#: A reference to a numbered section of a source document (``PROTOCOL section 2``), with what joins it to the text.
SOURCE_REFERENCE = re.compile(r"\s*\(\s*[A-Z][A-Z_]+(?:\.md)? section \d+[a-z]?\s*\)"          # "(SPEC section 2)"
                              r"|(?<=\()\s*[A-Z][A-Z_]+(?:\.md)? section \d+[a-z]?\s*[,:]\s*"  # "(SPEC section 1: ..."
                              r"|,\s*[A-Z][A-Z_]+(?:\.md)? section \d+[a-z]?(?=\s*\))")          # "(scope, SPEC section 1)"
_ON_HOOK = re.compile(r"\bon (" + "|".join(map(re.escape, HOOK_WORDS)) + r")\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])[ \t]+(?=[A-Z(])")
_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+")


@dataclass(frozen=True)
class Span:
    """A piece of inline text: ``text``, ``code``, ``strong``, ``link`` (to ``href``), ``slot`` (filled in from the record)
    or ``optional`` (text added only when it applies)."""
    text: str
    kind: str = "text"
    href: str = ""
    title: str = ""


Inline = list[Span]


@dataclass
class Block:
    """A paragraph (``p``, one item) or a bullet list (``ul``, one item per bullet)."""
    kind: str
    items: list[Inline]


Rich = list[Block]


def without_source_references(text: str) -> str:
    """Text without references to the sections of a source document the reader of the page does not have."""
    return SOURCE_REFERENCE.sub("", text)


def clinical(text: Any) -> str:
    """Text for clinicians: without the sentences about the machinery, without source-document references, and with
    "on <hook>" said as the moment the clinician meets it ("on patient-view" -> "when the chart is opened")."""
    text = _ON_HOOK.sub(lambda m: f"when {hooks_phrase([m.group(1)])}", str(text or ""))
    lines = []
    for line in without_source_references(text).split("\n"):
        kept = " ".join(sentence for sentence in _SENTENCE_END.split(line) if not TECHNICAL.search(sentence))
        if kept.strip() or not line.strip():
            lines.append(kept)
    return "\n".join(lines).strip()


def inline(text: str) -> Inline:
    """Text with its `code` and **strong** spans."""
    spans, start = [], 0
    for match in _INLINE.finditer(text):
        if match.start() > start:
            spans.append(Span(text[start:match.start()]))
        spans.append(Span(match.group(1), "code") if match.group(1) is not None else Span(match.group(2), "strong"))
        start = match.end()
    if start < len(text):
        spans.append(Span(text[start:]))
    return spans


def markdown(text: Any) -> Rich:
    """The small markdown subset of the artifacts: paragraphs, bullet lists, `code` and **strong**."""
    out: Rich = []
    for block in re.split(r"\n\s*\n", str(text or "")):
        lines = [line for line in block.splitlines() if line.strip()]
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
            out.append(Block("p", [inline(" ".join(lead))]))
        if items:
            out.append(Block("ul", [inline(item.strip()) for item in items]))
    return out


def sentence_case(text: str) -> str:
    """Text with its first letter in capitals."""
    return text[:1].upper() + text[1:]


def hooks_phrase(hooks: list[str]) -> str:
    """When the hooks fire, in words: ``['order-select', 'order-sign']`` -> 'an order is selected or signed'."""
    subjects: dict[str, list[str]] = {}
    for hook in hooks:
        subject, verb = HOOK_WORDS.get(hook, (f"the {hook} hook", "called"))
        subjects.setdefault(subject, []).append(verb)
    return " or ".join(f"{subject} is {' or '.join(verbs)}" for subject, verbs in subjects.items())


def kind_words(resource_type: Any) -> str:
    """A resource type in words: 'ServiceRequest' -> 'service request'."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(resource_type or "")).lower()


def wrap(text: str, width: int) -> list[str]:
    """Words of ``text`` in lines of at most ``width`` characters (a longer word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines
