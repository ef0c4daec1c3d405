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


@dataclass
class FeedbackItem:
    """One checked feedback entry."""

    card: str
    outcome: str
    accepted: list[str]
    reason: Mapping[str, Any] | None
    comment: str | None
    timestamp: str


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Check a feedback body (CDS Hooks 2.0); 400 naming every problem."""
    if not isinstance(body, Mapping) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadRequest("feedback body must be an object with a non-empty 'feedback' array")
    items, problems = [], []
    for i, raw in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where} must be an object")
            continue
        card, outcome, stamp = raw.get("card"), raw.get("outcome"), raw.get("outcomeTimestamp")
        if not isinstance(card, str) or not card:
            problems.append(f"{where}.card is required (the card's uuid)")
        if outcome not in ("accepted", "overridden"):
            problems.append(f"{where}.outcome must be 'accepted' or 'overridden'")
        if not isinstance(stamp, str) or not _is_datetime(stamp):
            problems.append(f"{where}.outcomeTimestamp is required (ISO 8601 date-time)")
        accepted = raw.get("acceptedSuggestions") or []
        if outcome == "accepted" and (not isinstance(accepted, list) or not accepted):
            problems.append(f"{where}.acceptedSuggestions is required when outcome is accepted")
            accepted = []
        ids = [s.get("id") for s in accepted if isinstance(s, Mapping)] if isinstance(accepted, list) else []
        if any(not isinstance(x, str) for x in ids) or (isinstance(accepted, list) and len(ids) != len(accepted)):
            problems.append(f"{where}.acceptedSuggestions must be objects with a string id")
        override = raw.get("overrideReason")
        reason, comment = None, None
        if override is not None:
            if not isinstance(override, Mapping):
                problems.append(f"{where}.overrideReason must be an object")
            else:
                reason = override.get("reason")
                comment = override.get("userComment")
                if reason is not None and not (isinstance(reason, Mapping) and isinstance(reason.get("code"), str)):
                    problems.append(f"{where}.overrideReason.reason must be a Coding with a code")
                if comment is not None and not isinstance(comment, str):
                    problems.append(f"{where}.overrideReason.userComment must be a string")
        items.append(FeedbackItem(card if isinstance(card, str) else "", outcome or "", [x for x in ids if isinstance(x, str)],
                                  reason if isinstance(reason, Mapping) else None, comment if isinstance(comment, str) else None,
                                  stamp if isinstance(stamp, str) else ""))
    if problems:
        raise BadRequest("invalid feedback", details=problems)
    return items


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
