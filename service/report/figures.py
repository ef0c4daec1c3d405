"""The figures of the feedback report, read from the store of issued cards and feedback, named from the loaded content.

A card's outcome is that of the latest feedback received about it (``accepted`` or ``overridden``); a card no feedback
names is ``ignored``. Cards are counted per recommendation or safety rule (the card's topic, the code of its
PlanDefinition action), per action (the kind of card), and per ISO week of issue; overrides per reason. Every name
shown comes from the content: the CodeSystem display of a topic code, an action's title as authored (never the
applied title, which can quote the patient's record), an override reason's display in the action's ValueSet.

The statements are plain SQL with ``?`` placeholders, so they run unchanged on SQLite and on PostgreSQL. Nothing about
a patient is read: the tables hold none (service.cds_hooks.feedback), and the report reads codes, ids and counts only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from protocol.engine.content import Content
from service.cds_hooks.cards import override_reason_codings
from service.cds_hooks.feedback import FeedbackStore
from service.page.logic import codings, concepts_of

#: One row per (topic, action, day of issue, outcome of the card's latest feedback, its override reason): how many cards.
CARD_OUTCOMES = """
SELECT c.topic AS topic, c.action_id AS action_id, substr(c.issued_at, 1, 10) AS day,
       f.outcome AS outcome, f.override_system AS reason_system, f.override_code AS reason_code, COUNT(*) AS cards
FROM issued_card c
LEFT JOIN feedback f ON f.id = (SELECT MAX(g.id) FROM feedback g WHERE g.card_uuid = c.uuid AND g.service_id = c.service_id)
GROUP BY c.topic, c.action_id, substr(c.issued_at, 1, 10), f.outcome, f.override_system, f.override_code
"""
#: Feedback items received, and how many of them name no card on record (another service's, or one purged).
FEEDBACK_ITEMS = """
SELECT COUNT(*) AS items,
       COALESCE(SUM(CASE WHEN NOT EXISTS (SELECT 1 FROM issued_card c WHERE c.uuid = f.card_uuid AND c.service_id = f.service_id)
                         THEN 1 ELSE 0 END), 0) AS unmatched
FROM feedback f
"""


@dataclass(frozen=True)
class Outcomes:
    """Cards issued and what became of them; ``ignored`` are those no feedback names."""

    issued: int = 0
    accepted: int = 0
    overridden: int = 0

    @property
    def ignored(self) -> int:
        return self.issued - self.accepted - self.overridden

    @property
    def acceptance(self) -> float | None:
        """Accepted cards as a share of those issued (None when none was issued)."""
        return self.accepted / self.issued if self.issued else None

    def __add__(self, other: "Outcomes") -> "Outcomes":
        return Outcomes(self.issued + other.issued, self.accepted + other.accepted, self.overridden + other.overridden)

    def plus(self, outcome: str | None, cards: int) -> "Outcomes":
        """These outcomes with ``cards`` more cards whose outcome is ``outcome`` (None: no feedback)."""
        return Outcomes(self.issued + cards, self.accepted + (cards if outcome == "accepted" else 0),
                        self.overridden + (cards if outcome == "overridden" else 0))


@dataclass(frozen=True)
class Topic:
    """A recommendation or safety rule of the protocol (a code of its CodeSystem) and its cards' outcomes."""

    code: str
    name: str
    outcomes: Outcomes


@dataclass(frozen=True)
class CardKind:
    """One top-level action of a PlanDefinition, whose cards share a title as authored, and their outcomes."""

    action_id: str
    title: str
    plan: str
    topic: str
    outcomes: Outcomes


@dataclass(frozen=True)
class OverrideReason:
    """How many cards of a topic were overridden with one reason (``code`` None: no reason given)."""

    topic: str
    system: str | None
    code: str | None
    display: str
    count: int


@dataclass(frozen=True)
class Week:
    """An ISO week of issue (``2026-W49``, from its Monday) and the outcomes of the cards issued in it."""

    week: str
    monday: date
    outcomes: Outcomes


@dataclass(frozen=True)
class Figures:
    """Everything the report shows: counts, codes, action ids and weeks only."""

    topics: tuple[Topic, ...]
    actions: tuple[CardKind, ...]
    reasons: tuple[OverrideReason, ...]
    weeks: tuple[Week, ...]
    total: Outcomes
    feedback_items: int  #: feedback items received
    feedback_unmatched: int  #: of those, items about a card not on record

    def topic_name(self, code: str) -> str:
        """The name of a topic code (the code itself when the content does not name it)."""
        return next((t.name for t in self.topics if t.code == code), code)


@dataclass
class _Names:
    """What the content says about the cards: topic names in the CodeSystem's order, and each top-level action."""

    topics: dict[str, str] = field(default_factory=dict)
    actions: dict[str, tuple[str, str, str]] = field(default_factory=dict)  #: action id -> (title, plan title, topic code)
    reasons: dict[str, list[dict[str, str]]] = field(default_factory=dict)  #: action id -> its override reason codings


def content_names(content: Content) -> _Names:
    """Topic names (the CodeSystem display of each top-level action's code), action titles and override reasons."""
    names = _Names()
    displays: dict[tuple[str, str], str] = {}
    order: dict[tuple[str, str], int] = {}
    for system in content.of_type("CodeSystem"):
        for concept in concepts_of(system.get("concept")):
            key = (system.get("url", ""), concept.get("code", ""))
            displays[key] = concept.get("display") or key[1]
            order.setdefault(key, len(order))
    found: list[tuple[tuple[str, str], str]] = []
    for plan in content.of_type("PlanDefinition"):
        plan_title = plan.get("title") or plan.get("name") or plan.get("id", "")
        for action in plan.get("action") or []:
            coding = next((c for c in codings(action.get("code")) if c.get("code")), None)
            action_id = action.get("id")
            if not action_id:
                continue
            code = coding["code"] if coding else action_id
            key = (coding.get("system", "") if coding else "", code)
            names.actions[action_id] = (action.get("title") or action_id, plan_title, code)
            names.reasons[action_id] = override_reason_codings(content, action)
            found.append((key, displays.get(key) or action.get("title") or code))
    for key, name in sorted(found, key=lambda item: (order.get(item[0], len(order)), item[0][1])):
        names.topics.setdefault(key[1], name)
    return names


def iso_week(day: date) -> tuple[str, date]:
    """The ISO week of a day (``2026-W49``) and its Monday."""
    year, week, weekday = day.isocalendar()
    return f"{year}-W{week:02d}", day - timedelta(days=weekday - 1)


def read_rows(store: FeedbackStore) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The grouped card outcomes and the feedback counts, in one read through the store (SQLite or PostgreSQL)."""
    outcomes, feedback = store.query(CARD_OUTCOMES, FEEDBACK_ITEMS)
    return outcomes, feedback[0]


def compute_figures(rows: Iterable[Mapping[str, Any]], feedback: Mapping[str, Any], content: Content) -> Figures:
    """The report's figures from the grouped rows of CARD_OUTCOMES and the counts of FEEDBACK_ITEMS."""
    names = content_names(content)
    by_topic: dict[str, Outcomes] = defaultdict(Outcomes)
    by_action: dict[str, Outcomes] = defaultdict(Outcomes)
    by_day: dict[date, Outcomes] = defaultdict(Outcomes)
    reasons: dict[tuple[str, str | None, str | None], int] = defaultdict(int)
    topic_of_action: dict[str, str] = {}
    for row in rows:
        cards, outcome, action_id = int(row["cards"]), row["outcome"], row["action_id"]
        topic = row["topic"] or names.actions.get(action_id, ("", "", action_id))[2]
        topic_of_action.setdefault(action_id, topic)
        by_topic[topic] = by_topic[topic].plus(outcome, cards)
        by_action[action_id] = by_action[action_id].plus(outcome, cards)
        by_day[date.fromisoformat(row["day"])] = by_day[date.fromisoformat(row["day"])].plus(outcome, cards)
        if outcome == "overridden":
            system, code = _reason_coding(names.reasons.get(action_id) or [], row["reason_system"], row["reason_code"])
            reasons[(topic, system, code)] += cards
    codes = list(names.topics) + sorted(set(by_topic) - set(names.topics))
    topics = tuple(Topic(code, names.topics.get(code, code), by_topic.get(code, Outcomes())) for code in codes)
    action_ids = list(names.actions) + sorted(set(by_action) - set(names.actions))
    actions = []
    for action_id in action_ids:
        title, plan, topic = names.actions.get(action_id) or (action_id, "", topic_of_action.get(action_id, action_id))
        actions.append(CardKind(action_id, title, plan, topic, by_action.get(action_id, Outcomes())))
    displays = {(r["system"], r["code"]): r["display"] for codings in names.reasons.values() for r in codings}
    rank = {code: i for i, code in enumerate(codes)}
    override_rows = tuple(sorted((OverrideReason(topic, system, code, displays.get((system, code)) or code or "no reason given", count)
                                  for (topic, system, code), count in reasons.items()),
                                 key=lambda r: (rank.get(r.topic, len(rank)), -r.count, r.code or "~")))
    total = sum(by_topic.values(), Outcomes())
    return Figures(topics, tuple(actions), override_rows, _weeks(by_day), total, int(feedback["items"]), int(feedback["unmatched"]))


def _reason_coding(offered: list[dict[str, str]], system: str | None, code: str | None) -> tuple[str | None, str | None]:
    """The (system, code) of a stored override reason; one sent without its system takes that of the card's reason of
    that code (feedback is checked against the card's reasons, by code when the system is left out)."""
    if code is not None and system is None:
        system = next((r["system"] for r in offered if r["code"] == code), None)
    return system, code


def _weeks(by_day: Mapping[date, Outcomes]) -> tuple[Week, ...]:
    """Outcomes per ISO week of issue, every week from the first to the last (a week without cards counts zero)."""
    if not by_day:
        return ()
    weeks: dict[str, Week] = {}
    monday = iso_week(min(by_day))[1]
    while monday <= max(by_day):
        label, _ = iso_week(monday)
        weeks[label] = Week(label, monday, Outcomes())
        monday += timedelta(days=7)
    for day, outcomes in by_day.items():
        label, _ = iso_week(day)
        weeks[label] = Week(label, weeks[label].monday, weeks[label].outcomes + outcomes)
    return tuple(weeks.values())


def read_figures(store: FeedbackStore, content: Content) -> Figures:
    """The report's figures for what the store holds now."""
    rows, feedback = read_rows(store)
    return compute_figures(rows, feedback, content)
