"""Durable record of the cards issued and of the feedback clients send about them (SQLite, WAL mode).

Cards are recorded by uuid with their service, hook, action and topic, so feedback can be joined to what was
shown. Nothing about the patient is stored: no ids, no names, no clinical data, no tokens.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from service.cards import IssuedCard
from service.errors import BadRequest

log = logging.getLogger("back_spasm_cds.feedback")

SCHEMA = """
CREATE TABLE IF NOT EXISTS issued_card (
    uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    action_id TEXT NOT NULL,
    topic TEXT,
    indicator TEXT NOT NULL,
    summary TEXT NOT NULL,
    issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS issued_suggestion (
    uuid TEXT PRIMARY KEY,
    card_uuid TEXT NOT NULL REFERENCES issued_card(uuid),
    label TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    accepted_suggestions TEXT,
    override_system TEXT,
    override_code TEXT,
    override_display TEXT,
    user_comment TEXT,
    outcome_timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL,
    card_known INTEGER NOT NULL,
    UNIQUE (service_id, card_uuid, outcome, outcome_timestamp)
);
CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid);
"""


#: The most feedback items one request may carry, and the most accepted suggestions one item may name.
MAX_ITEMS = 1000
MAX_SUGGESTIONS = 100
#: Longest text accepted in each stored field (characters): ids are UUIDs in practice, codes and systems are short,
#: a clinician's comment is a few sentences. Anything longer is not feedback on a card of this service.
MAX_LENGTH = {"card": 256, "suggestion id": 256, "outcomeTimestamp": 64, "system": 2048, "code": 256, "display": 1024,
              "userComment": 10_000}


@dataclass
class FeedbackItem:
    """One checked feedback entry: every field is of the type its column holds."""

    card: str
    outcome: str
    accepted: list[str]
    reason: Mapping[str, Any] | None
    comment: str | None
    timestamp: str


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Check a feedback body (CDS Hooks 2.0); 400 naming every problem.

    Every value that is stored is checked for its JSON type and length here, so the database is only ever
    given strings it can hold; fields the service does not store are ignored.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadRequest("feedback body must be an object with a non-empty 'feedback' array")
    if len(body["feedback"]) > MAX_ITEMS:
        raise BadRequest(f"feedback holds {len(body['feedback'])} items; at most {MAX_ITEMS} are accepted in one request")
    items, problems = [], []
    for i, raw in enumerate(body["feedback"]):
        item = _item(raw, f"feedback[{i}]", problems)
        if item is not None:
            items.append(item)
    if problems:
        raise BadRequest("invalid feedback", details=problems)
    return items


def _item(raw: Any, where: str, problems: list[str]) -> FeedbackItem | None:
    """One feedback entry, or None with its problems added."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be an object")
        return None
    found: list[str] = []
    card = _text(raw.get("card"), f"{where}.card", MAX_LENGTH["card"], found, "the card's uuid")
    outcome = raw.get("outcome")
    if not isinstance(outcome, str) or outcome not in ("accepted", "overridden"):
        found.append(f"{where}.outcome must be 'accepted' or 'overridden'")
    stamp = _text(raw.get("outcomeTimestamp"), f"{where}.outcomeTimestamp", MAX_LENGTH["outcomeTimestamp"], found, "ISO 8601 date-time")
    if stamp is not None and not _is_datetime(stamp):
        found.append(f"{where}.outcomeTimestamp must be an ISO 8601 date-time")
    accepted = _accepted(raw.get("acceptedSuggestions"), outcome == "accepted", f"{where}.acceptedSuggestions", found)
    reason, comment = _override(raw.get("overrideReason"), f"{where}.overrideReason", found)
    problems.extend(found)
    if found:
        return None
    return FeedbackItem(card, outcome, accepted, reason, comment, stamp)  # type: ignore[arg-type]


def _text(value: Any, where: str, limit: int, problems: list[str], what: str) -> str | None:
    """A required non-empty string of at most ``limit`` characters, else None with the problem added."""
    if not isinstance(value, str) or not value:
        problems.append(f"{where} is required ({what}, a string)")
        return None
    if len(value) > limit:
        problems.append(f"{where} is longer than {limit} characters")
        return None
    return value


def _optional_text(value: Any, where: str, limit: int, problems: list[str]) -> str | None:
    """An optional string (absent or null: None) of at most ``limit`` characters; a problem for any other type."""
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{where} must be a string")
    elif len(value) > limit:
        problems.append(f"{where} is longer than {limit} characters")
    else:
        return value
    return None


def _accepted(value: Any, required: bool, where: str, problems: list[str]) -> list[str]:
    """The ids of the accepted suggestions: a list of objects with a string id, required when the outcome is accepted."""
    if value is None:
        if required:
            problems.append(f"{where} is required when outcome is accepted")
        return []
    if not isinstance(value, list) or (required and not value):
        problems.append(f"{where} must be a {'non-empty ' if required else ''}list of objects with a string id")
        return []
    if len(value) > MAX_SUGGESTIONS:
        problems.append(f"{where} names {len(value)} suggestions; at most {MAX_SUGGESTIONS} are accepted")
        return []
    ids = [s.get("id") if isinstance(s, Mapping) else None for s in value]
    if not all(isinstance(x, str) and x for x in ids):
        problems.append(f"{where} must be objects with a string id")
        return []
    if any(len(x) > MAX_LENGTH["suggestion id"] for x in ids):
        problems.append(f"{where}: a suggestion id is longer than {MAX_LENGTH['suggestion id']} characters")
        return []
    return ids


def _override(value: Any, where: str, problems: list[str]) -> tuple[dict[str, str] | None, str | None]:
    """The override reason (a Coding with a code; system and display strings if given) and the user's comment."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        problems.append(f"{where} must be an object")
        return None, None
    comment = _optional_text(value.get("userComment"), f"{where}.userComment", MAX_LENGTH["userComment"], problems)
    coding = value.get("reason")
    if coding is None:
        return None, comment
    if not isinstance(coding, Mapping) or not isinstance(coding.get("code"), str):
        problems.append(f"{where}.reason must be a Coding with a code")
        return None, comment
    reason = {}
    for key in ("system", "code", "display"):
        text = _optional_text(coding.get(key), f"{where}.reason.{key}", MAX_LENGTH[key], problems)
        if text is not None:
            reason[key] = text
    return reason, comment


def _is_datetime(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FeedbackStore:
    """SQLite storage shared by the threads of a worker (one connection per thread)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._local = threading.local()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            self._local.db = db
        return db

    def record_cards(self, service_id: str, hook: str, hook_instance: str, cards: Iterable[IssuedCard]) -> None:
        """Remember the cards of one response (and their suggestions)."""
        cards = list(cards)
        if not cards:
            return
        issued_at = _now()
        db = self._connection()
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO issued_card VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(c.uuid, service_id, hook, hook_instance, c.action_id, c.topic, c.indicator, c.summary, issued_at) for c in cards])
            db.executemany("INSERT OR IGNORE INTO issued_suggestion VALUES (?, ?, ?)",
                           [(s_uuid, c.uuid, label) for c in cards for s_uuid, label in c.suggestions])

    def record_cards_safely(self, service_id: str, hook: str, hook_instance: str, cards: Iterable[IssuedCard]) -> bool:
        """record_cards, but a database failure is logged, not raised: the clinician still gets the cards."""
        try:
            self.record_cards(service_id, hook, hook_instance, cards)
        except sqlite3.Error as exc:
            log.error("issued cards not recorded", extra={"fields": {"event": "database-error", "error": type(exc).__name__}})
            return False
        return True

    def record_feedback(self, service_id: str, items: Iterable[FeedbackItem]) -> int:
        """Store feedback items; the same item sent twice is kept once. Returns how many were new."""
        db = self._connection()
        received = _now()
        new = 0
        with db:
            db.execute("BEGIN")
            for item in items:
                known = db.execute("SELECT 1 FROM issued_card WHERE uuid = ? AND service_id = ?", (item.card, service_id)).fetchone() is not None
                reason = item.reason or {}
                cursor = db.execute(
                    "INSERT OR IGNORE INTO feedback (service_id, card_uuid, outcome, accepted_suggestions, override_system, override_code,"
                    " override_display, user_comment, outcome_timestamp, received_at, card_known) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (service_id, item.card, item.outcome, json.dumps(item.accepted) if item.accepted else None, reason.get("system"),
                     reason.get("code"), reason.get("display"), item.comment, item.timestamp, received, int(known)))
                new += cursor.rowcount
        return new

    def feedback(self, card_uuid: str | None = None) -> list[dict[str, Any]]:
        """Stored feedback (all, or for one card), with the card it concerns."""
        db = self._connection()
        db.row_factory = sqlite3.Row
        try:
            query = ("SELECT f.*, c.action_id, c.topic, c.hook FROM feedback f LEFT JOIN issued_card c ON c.uuid = f.card_uuid"
                     + (" WHERE f.card_uuid = ?" if card_uuid else "") + " ORDER BY f.id")
            return [dict(row) for row in db.execute(query, (card_uuid,) if card_uuid else ())]
        finally:
            db.row_factory = None

    def card(self, card_uuid: str) -> dict[str, Any] | None:
        db = self._connection()
        db.row_factory = sqlite3.Row
        try:
            row = db.execute("SELECT * FROM issued_card WHERE uuid = ?", (card_uuid,)).fetchone()
            return dict(row) if row else None
        finally:
            db.row_factory = None

    def ready(self) -> bool:
        """The database answers and holds its tables."""
        try:
            db = self._connection()
            for table in ("issued_card", "issued_suggestion", "feedback"):
                db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
        except sqlite3.Error:
            return False
        return True
