"""Durable record of the cards issued and of the feedback clients send about them (SQLite in WAL mode, or PostgreSQL).

The ``database`` setting names the database: a file path or ``sqlite:///path`` for SQLite (one machine, the default),
``postgresql://user@host:port/db`` for a PostgreSQL database that several instances share (service.cds_hooks.postgresql). The
same statements serve both.

Nothing about the patient is stored: no ids, no names, no clinical data, no text from the record, no tokens.
What each table keeps:

- ``issued_card``: the card's uuid, service, hook, hookInstance, the protocol's action id and topic code, the indicator
  and when it was issued. Not the summary: it can name the patient's drugs and conditions as the record wrote them.
- ``issued_suggestion``: the suggestion's uuid and its card. Not the label, for the same reason.
- ``feedback``: card uuid, outcome, the uuids of the accepted suggestions, the override reason's coding (system, code,
  display: the codes of the service's own ValueSet), the client's outcomeTimestamp, when it was received, and whether
  the card was one this service issued. A clinician's ``userComment`` is free text that can hold anything about the
  patient: it is never stored, only its length (``comment_length``; NULL when no comment was given).

A database made by an earlier version, which kept summaries, labels and comments, is upgraded when the store opens it:
those columns are dropped (their freed space overwritten with zeros) and every card, suggestion and feedback row is kept.

Nothing is kept for ever: cards (with their suggestions) issued, and feedback received, more than ``retention_days``
ago are deleted by the first write of each hour in each process (see FeedbackStore).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from service.cds_hooks.cards import IssuedCard
from service.config import Settings, database_kind
from service.errors import BadRequest, SchemaTooNew, ServiceError

log = logging.getLogger("back_spasm_cds.feedback")

#: Each table's columns. Only ids, codes, times and counts: see the module's docstring.
TABLES = {
    "issued_card": """(
    uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    action_id TEXT NOT NULL,
    topic TEXT,
    indicator TEXT NOT NULL,
    issued_at TEXT NOT NULL
)""",
    "issued_suggestion": """(
    uuid TEXT PRIMARY KEY,
    card_uuid TEXT NOT NULL REFERENCES issued_card(uuid)
)""",
    "feedback": """(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    accepted_suggestions TEXT,
    override_system TEXT,
    override_code TEXT,
    override_display TEXT,
    comment_length INTEGER,
    outcome_timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL,
    card_known INTEGER NOT NULL,
    UNIQUE (service_id, card_uuid, outcome, outcome_timestamp)
)""",
}
INDEXES = """
CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid);
CREATE INDEX IF NOT EXISTS feedback_received ON feedback(received_at);
CREATE INDEX IF NOT EXISTS issued_card_time ON issued_card(issued_at);
CREATE INDEX IF NOT EXISTS issued_suggestion_card ON issued_suggestion(card_uuid);
"""
SCHEMA = "".join(f"CREATE TABLE IF NOT EXISTS {name} {columns};\n" for name, columns in TABLES.items()) + INDEXES

#: Columns an earlier version kept that can hold text from the patient's record, dropped when its database is opened.
DROPPED_COLUMNS = {"issued_card": ("summary",), "issued_suggestion": ("label",), "feedback": ("user_comment",)}
#: New columns filled from a dropped one when a database is upgraded: (the old column, the SQL expression over it).
DERIVED_COLUMNS = {"feedback": {"comment_length": ("user_comment", "length(user_comment)")}}


#: The most feedback items one request may carry, and the most accepted suggestions one item may name.
MAX_ITEMS = 100
MAX_SUGGESTIONS = 100
#: Longest text accepted in each field (characters): card and suggestion ids are this service's UUIDs, systems, codes and
#: displays those of its override-reason ValueSets, a clinician's comment (never stored) a few sentences. Anything
#: longer is not feedback on a card of this service.
MAX_LENGTH = {"card": 128, "suggestion id": 128, "outcomeTimestamp": 64, "system": 256, "code": 128, "display": 256,
              "userComment": 10_000}
#: The most characters one request's feedback may add to the table, all stored fields of all items together, so that
#: no request adds more than a few hundred kilobytes with the indexes (a feedback item is usually under 200).
MAX_STORED_CHARACTERS = 64 * 1024
#: The most cards of one response recorded, and the most suggestions recorded of each: a call with thousands of draft
#: orders gets all its cards, but adds a bounded record (feedback on a card not recorded is kept, with card_known 0).
MAX_RECORDED_CARDS = 100
MAX_RECORDED_SUGGESTIONS = 10


@dataclass
class FeedbackItem:
    """One checked feedback entry: every field is of the type its column holds."""

    card: str
    outcome: str
    accepted: list[str]
    reason: Mapping[str, Any] | None
    comment_length: int | None  #: the userComment's length, None without one; the text itself is not kept
    timestamp: str


def check_against_issued(items: list[FeedbackItem], issued: Mapping[str, tuple[str, set[str]]],
                         reasons_of: Callable[[str], set[tuple[str, str]] | None]) -> None:
    """Feedback on a card this service issued must name that card's suggestions and one of its override reasons
    (``reasons_of(action_id)``: the (system, code) pairs the card offered, None if it offered none; a reason sent
    without a system is matched by its code); 400 naming each item that does not. Feedback on a card not on record
    (issued elsewhere or long ago) is kept as it is."""
    problems = []
    for i, item in enumerate(items):
        if item.card not in issued:
            continue
        action_id, suggestions = issued[item.card]
        strangers = [s for s in item.accepted if s not in suggestions]
        if strangers:
            problems.append(f"feedback[{i}].acceptedSuggestions: {', '.join(strangers)} is not a suggestion of card {item.card}")
        if item.reason:
            offered = reasons_of(action_id)
            pair = (item.reason.get("system"), item.reason.get("code"))
            known = pair in offered if offered is not None and pair[0] else offered is None or pair[1] in {c for _, c in offered}
            if not known:
                problems.append(f"feedback[{i}].overrideReason.reason: {pair[0]}|{pair[1]} is not one of the override reasons "
                                f"card {item.card} offered")
    if problems:
        raise BadRequest("feedback does not match the cards issued", details=problems)


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
    size = sum(_stored_size(item) for item in items)
    if size > MAX_STORED_CHARACTERS:
        raise BadRequest(f"feedback would store {size} characters; at most {MAX_STORED_CHARACTERS} are accepted in one request "
                         "(send the items in several requests)")
    return items


def _stored_size(item: FeedbackItem) -> int:
    """How many characters an item adds to the feedback table (its stored text fields)."""
    reason = item.reason or {}
    accepted = len(json.dumps(item.accepted)) if item.accepted else 0
    return len(item.card) + len(item.outcome) + len(item.timestamp) + accepted + sum(len(v) for v in reason.values())


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
    return FeedbackItem(card, outcome, accepted, reason, None if comment is None else len(comment), stamp)  # type: ignore[arg-type]


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


#: How long one attempt waits for the write lock (SqliteFile._begin), how many attempts a write gets, and the
#: first pause between attempts (doubled each time and jittered, so that writers refused together do not retry together).
#: Every attempt waiting its full time stays well inside gunicorn's 30-second worker timeout.
BUSY_TIMEOUT_MS = 2000
WRITE_ATTEMPTS = 4
#: Seconds between two looks at a write lock another connection holds (see SqliteFile._begin).
LOCK_POLL_SECONDS = 0.0005
FIRST_BACKOFF_SECONDS = 0.02
#: Seconds a client is asked to wait (Retry-After) before it sends a refused write again.
RETRY_AFTER_SECONDS = 2
#: SQLite's primary result codes for a database another connection holds.
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

Result = TypeVar("Result")


class StorageUnavailable(ServiceError):
    """A write the database cannot take now (still locked after every attempt, disk full, file unusable): nothing of it
    was kept, so the client is told to send it again later (503 with Retry-After), never told it was stored."""

    status = 503

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}


def is_busy(exc: sqlite3.Error) -> bool:
    """The error says another connection holds the database ("database is locked", "busy"): worth another attempt."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _backoff(attempt: int) -> float:
    """Pause before attempt ``attempt`` (1, 2, ...): doubling from FIRST_BACKOFF_SECONDS, between half and one and a half of it."""
    return FIRST_BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)


def _database_errors() -> tuple[type[Exception], ...]:
    """The errors either database's driver raises (psycopg's only when the ``postgresql`` extra is installed)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


#: What a failed database call raises, on either database.
DATABASE_ERRORS = _database_errors()


def sqlite_path(database: str) -> str:
    """The file of an SQLite ``database`` setting: ``sqlite:///relative/path``, ``sqlite:////absolute/path`` or a plain path."""
    return database[len("sqlite:///"):] if database.startswith("sqlite:///") else database


def open_database(database: str, sqlite_schema: str) -> Any:
    """The database a ``database`` setting names: a SqliteFile (its tables made with ``sqlite_schema``), or a
    PostgresDatabase (its tables made by its migrations). Both offer ``write``, ``read`` and ``run_calls_with``."""
    if database_kind(database) == "postgresql":
        try:
            from service.cds_hooks.postgresql import PostgresDatabase
        except ImportError as exc:
            raise RuntimeError("a postgresql:// database needs the PostgreSQL driver: pip install 'back-spasm-cds[postgresql]'") from exc
        return PostgresDatabase(database, unavailable=_refusal, attempts=lambda: WRITE_ATTEMPTS, backoff=_backoff)
    return SqliteFile(sqlite_path(database), sqlite_schema)


def _refusal(what: str, exc: Exception, attempts: int) -> StorageUnavailable:
    """The refusal of a write to PostgreSQL, logged with the error's class (never the statement, its values or the URL)."""
    log.error("database write refused", extra={"fields": {"event": "database-unavailable", "write": what, "attempts": attempts,
                                                          "error": type(exc).__name__}})
    return StorageUnavailable(f"the database cannot take the {what} now; send it again later")


#: The database file and its -wal and -shm files are the service user's alone: they hold what clinicians did with cards.
FILE_MODE = 0o600
#: The files SQLite keeps beside the database in WAL mode (made with the database file's mode).
COMPANION_SUFFIXES = ("-wal", "-shm")


def private_file(path: str) -> None:
    """Create the database file with FILE_MODE before SQLite opens it (SQLite gives the -wal and -shm files it creates the
    database file's mode), and take group and other access away from database files made with wider permissions (by an
    earlier version or by hand), logging each file tightened. A path where no file can be made is left for SQLite's own
    error; a file whose mode cannot be changed is logged and used."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        pass
    except OSError:
        return
    else:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    for name in (path, *(path + suffix for suffix in COMPANION_SUFFIXES)):
        _tighten(name)


def _tighten(name: str) -> None:
    """FILE_MODE for a regular file readable or writable by group or others; nothing for others, or a missing file."""
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) or not mode & 0o077:
        return
    fields = {"event": "database-permissions", "file": name, "mode": oct(mode & 0o777)}
    try:
        os.chmod(name, FILE_MODE)
    except OSError as exc:
        log.error("database file readable by other users and its mode cannot be changed", extra={"fields": {**fields, "error": type(exc).__name__}})
        return
    log.warning("database file was readable by other users: mode set to 0600", extra={"fields": {**fields, "now": oct(FILE_MODE)}})


def _call(function: Callable[[], Any]) -> Any:
    return function()


class SqliteFile:
    """One SQLite file shared by the threads of a process (a connection each) and by several worker processes.

    The file is in WAL mode, with ``secure_delete`` on: what a write deletes is overwritten with zeros, not left in
    free space. A durable write commits with ``synchronous=FULL``: when it returns it has been synced to
    disk, so it survives the process being killed and the machine losing power. A write that may be lost with the
    machine's power (``durable=False``) commits with ``synchronous=NORMAL``: it survives the process being killed, and
    reaches the disk with the next durable write, without a sync of its own. Each sync is made while the write lock
    is held, so they are kept for the writes that need them. A write runs as one
    transaction begun with ``BEGIN IMMEDIATE``, which takes the write lock before reading and waits for it (see
    below; a deferred transaction that reads first fails at once with "database is locked" when another
    process commits in between). A write still refused as busy is tried again, a bounded number of times; then, and
    for a database that cannot be written at all, it is rolled back and refused with StorageUnavailable.

    The constructor opens the constructing thread's connection, so that a database that cannot be opened stops the
    service at start. Worker processes forked after it (gunicorn preloads the application) open their own. Before each
    connection is opened, the files are made the service user's alone (see private_file).

    A write waits for the write lock by trying again every half millisecond or so (SqliteFile._begin), not in SQLite's
    busy handler, which sleeps 1, 2, 5, 10 ... up to 100 ms between its looks: with eight threads writing at once, a
    write could wait there half a second for a lock that was free most of that time.
    """

    def __init__(self, path: str, schema: str):
        self.path = path
        self.schema = schema
        self.offload: Callable[[Callable[[], Any]], Any] = _call  #: runs each database call (see run_calls_with)
        self._local = threading.local()
        self._inherited: list[sqlite3.Connection] = []
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.connection()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema created) on first use.

        A connection inherited from the parent process is set aside, never used and never closed: closing its file
        in this process would drop the locks this process's own connections hold on the database.
        """
        pid, db = getattr(self._local, "db", (None, None))
        if db is None or pid != os.getpid():
            if db is not None:
                self._inherited.append(db)
            db = self._open()
            self._local.db = (os.getpid(), db)
            self._local.synchronous = "FULL"
        return db

    def close(self) -> None:
        """Close this thread's connection, if it has one (the next use opens a new one)."""
        pid, db = getattr(self._local, "db", (None, None))
        self._local.db = (None, None)
        if db is not None and pid == os.getpid():
            db.close()

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            private_file(self.path)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=True)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            db.executescript(self.schema)
        except BaseException:
            db.close()
            raise
        return db

    def write(self, work: Callable[[sqlite3.Connection], Result], what: str, durable: bool = True, *, one_statement: bool = False,
              pipelined: bool = False) -> Result:
        """``work(connection)`` in one write transaction; its result once committed (and synced to disk if ``durable``).
        ``what`` names the write in logs. ``one_statement`` and ``pipelined`` save round trips to a database server
        (PostgresDatabase.write); SQLite, in the process, has none to save."""
        attempt = 1
        while True:
            try:
                return self.offload(lambda: self._transaction(work, "FULL" if durable else "NORMAL"))
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or attempt == WRITE_ATTEMPTS:
                    raise self._unavailable(what, exc, attempt) from None
            except sqlite3.DatabaseError as exc:
                if type(exc) is not sqlite3.DatabaseError:  # integrity, programming, data errors: a fault of the code
                    raise
                raise self._unavailable(what, exc, attempt) from None
            log.info("database busy, write tried again", extra={"fields": {"event": "database-busy", "write": what, "attempt": attempt}})
            time.sleep(_backoff(attempt))
            attempt += 1

    def read(self, work: Callable[[sqlite3.Connection], Result]) -> Result:
        """``work(connection)`` outside any write transaction (for reads)."""
        return self.offload(lambda: work(self.connection()))

    def open_connection(self) -> None:
        """Open the connection of the thread database calls run on (see run_calls_with) unless it is open."""
        self.offload(self.connection)

    def run_calls_with(self, offload: Callable[[Callable[[], Any]], Any]) -> None:
        """Run every database call through ``offload`` (a call taking a function and returning its result). Under gevent
        it hands the call to a pool of real threads: SQLite blocks while it waits for a lock or syncs to disk, and would
        otherwise stop every request of the worker; the pool's threads keep their connections from call to call."""
        self.offload = offload

    def _transaction(self, work: Callable[[sqlite3.Connection], Result], synchronous: str) -> Result:
        db = self.connection()
        if self._local.synchronous != synchronous:
            db.execute(f"PRAGMA synchronous={synchronous}")
            self._local.synchronous = synchronous
        self._begin(db)
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        return result

    @staticmethod
    def _begin(db: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock at most BUSY_TIMEOUT_MS by trying again every LOCK_POLL_SECONDS
        or so (jittered); the last refusal is raised. SQLite's own busy handler sleeps ever longer between its looks
        (1, 2, 5, 10 ... 100 ms), so that a write meeting a few others in turn waited far longer than they held it."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        db.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if not is_busy(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(LOCK_POLL_SECONDS * random.uniform(0.5, 1.5))
        finally:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _rollback(self, db: sqlite3.Connection) -> None:
        """Undo an unfinished transaction; a connection that cannot even roll back is closed, to be opened afresh."""
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            self.close()

    def _unavailable(self, what: str, exc: sqlite3.Error, attempts: int) -> StorageUnavailable:
        """The refusal of a write, logged with the SQLite error's name (never the statement or its values)."""
        log.error("database write refused", extra={"fields": {"event": "database-unavailable", "write": what, "attempts": attempts,
                                                              "error": type(exc).__name__, "sqlite_error": getattr(exc, "sqlite_errorname", None)}})
        return StorageUnavailable(f"the database cannot take the {what} now; send it again later")


#: The version of the SQLite schema, kept in the file's ``user_version``: 1 is the schema of TABLES and INDEXES with
#: ``seen_jti`` (an unstamped file is brought to it by upgrade_tables). A file of a higher version is refused at start.
SQLITE_SCHEMA_VERSION = 1


#: Days cards and feedback are kept when the settings say nothing (Settings.retention_days); 0 keeps them for ever.
DEFAULT_RETENTION_DAYS = Settings.retention_days
#: One process purges at most this often: on its first write once this long has passed since its last purge.
PURGE_INTERVAL = timedelta(hours=1)


def _stamp(moment: datetime) -> str:
    """A moment as the tables hold it: UTC, milliseconds, 'Z' (so that times compare as text)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc_now() -> datetime:
    """The wall clock, in UTC (the store's clock unless it is given another)."""
    return datetime.now(timezone.utc)


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    """The names of a table's columns, in order (none for a table that does not exist)."""
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def _outdated(db: sqlite3.Connection, table: str) -> bool:
    """The table still has a column an earlier version kept (DROPPED_COLUMNS)."""
    return any(column in _columns(db, table) for column in DROPPED_COLUMNS.get(table, ()))


def upgrade_tables(db: sqlite3.Connection) -> list[str]:
    """Rebuild, inside the caller's write transaction, every table that still has a column of DROPPED_COLUMNS; the names
    of the tables rebuilt (none for a database of this version).

    Each is rebuilt the way that works on every SQLite version (DROP COLUMN needs 3.35): a table of the current columns
    is filled from the old one (a derived column from its source), the old table dropped, the new one renamed. Ids,
    AUTOINCREMENT sequence included, are kept. With ``secure_delete`` on, the old table's pages are overwritten with
    zeros as they are freed.
    """
    upgraded = []
    for table, columns in TABLES.items():
        if not _outdated(db, table):
            continue
        existing = _columns(db, table)
        db.execute(f"CREATE TABLE {table}__upgraded {columns}")
        wanted = _columns(db, f"{table}__upgraded")
        derived = DERIVED_COLUMNS.get(table, {})
        values = [c if c in existing else derived[c][1] if c in derived and derived[c][0] in existing else "NULL" for c in wanted]
        db.execute(f"INSERT INTO {table}__upgraded ({', '.join(wanted)}) SELECT {', '.join(values)} FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}__upgraded RENAME TO {table}")
        upgraded.append(table)
    if upgraded:
        for statement in filter(str.strip, INDEXES.split(";")):
            db.execute(statement)
    return upgraded


class FeedbackStore:
    """Issued cards and feedback in SQLite, shared by the threads of a worker and by the worker processes, or in
    PostgreSQL, shared by every instance as well.

    Writes are durable before they are acknowledged, and a database that stays locked or cannot be written gives
    StorageUnavailable (503), never a partial write (see SqliteFile).

    Retention: the first write of a process, and its first write once PURGE_INTERVAL has passed since its last purge,
    also deletes the cards issued (with their suggestions) and the feedback received more than ``retention_days`` before
    ``clock()``. The purge runs inside that write's transaction, under the lock the write holds anyway, so it costs no
    extra lock or sync; it is a savepoint of its own, so a purge that fails is logged and undone and the write goes on.
    """

    def __init__(self, path: str | Path, clock: Callable[[], datetime] | None = None):
        self.kind = database_kind(str(path))  #: "sqlite" or "postgresql"
        self.path = sqlite_path(str(path)) if self.kind == "sqlite" else str(path)  #: the SQLite file, or the PostgreSQL URL
        self.clock = clock or _utc_now  #: when rows are stamped and purged
        self._last_purge: datetime | None = None
        self._purge_lock = threading.Lock()
        self._database = open_database(self.path, SCHEMA)
        if self.kind == "sqlite":
            self._upgrade()

    def _connection(self) -> sqlite3.Connection:
        return self._database.connection()

    def _upgrade(self) -> None:
        """Bring a database made by an earlier version to this schema, keeping its rows (see upgrade_tables), and stamp
        it with SQLITE_SCHEMA_VERSION (``PRAGMA user_version``), in one write; then move the rewritten pages into the
        database file and empty the WAL, so the dropped text is left in neither. A database stamped with this version is
        only read (no write lock is taken); one stamped by a newer version is refused (SchemaTooNew)."""
        version = self._connection().execute("PRAGMA user_version").fetchone()[0]
        if version > SQLITE_SCHEMA_VERSION:
            raise SchemaTooNew(f"the database's schema is version {version}, newer than this service's {SQLITE_SCHEMA_VERSION}: "
                               "run the newer service, or a database of its own")
        if version == SQLITE_SCHEMA_VERSION:
            return

        def upgrade(db: sqlite3.Connection) -> list[str]:
            tables = upgrade_tables(db)
            db.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")
            return tables

        upgraded = self._database.write(upgrade, "schema upgrade")
        if not upgraded:
            return
        busy = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        log.warning("database upgraded: columns that could hold patient text dropped",
                    extra={"fields": {"event": "database-upgraded", "tables": upgraded, "wal_emptied": not busy}})

    def _write(self, work: Callable[[sqlite3.Connection], Result], what: str, durable: bool, retention_days: int,
               pipelined: bool = False) -> Result:
        """``work`` in one write transaction (SqliteFile.write), preceded by the retention purge when one is due;
        ``pipelined`` (``work`` reads no result) sends it in one exchange to a database server when no purge is due."""
        cutoff = self._purge_cutoff(retention_days)
        purged: dict[str, int] = {}

        def run(db: sqlite3.Connection) -> Result:
            purged.clear()
            if cutoff is not None:
                purged.update(self._purge_safely(db, cutoff))
            return work(db)

        result = self._database.write(run, what, durable=durable, pipelined=pipelined and cutoff is None)
        if any(purged.values()):
            log.info("records past their retention deleted", extra={"fields": {"event": "database-purge", "before": cutoff, **purged}})
        return result

    def _purge_cutoff(self, retention_days: int) -> str | None:
        """The time before which rows go, when this process's purge is due (claimed, so one thread runs it); else None.
        A clock that went back is taken as due, so a purge is never put off for long."""
        if retention_days <= 0:
            return None
        now = self.clock()
        with self._purge_lock:
            last = self._last_purge
            if last is not None and timedelta(0) <= now - last < PURGE_INTERVAL:
                return None
            self._last_purge = now
        return _stamp(now - timedelta(days=retention_days))

    def _purge_safely(self, db: Any, cutoff: str) -> dict[str, int]:
        """_purge in a savepoint: on a database error it is undone and logged, and the caller's write goes on."""
        db.execute("SAVEPOINT retention")
        try:
            purged = self._purge(db, cutoff)
        except DATABASE_ERRORS as exc:
            try:
                db.execute("ROLLBACK TO SAVEPOINT retention")
                db.execute("RELEASE SAVEPOINT retention")
            except DATABASE_ERRORS:
                raise exc from None
            log.error("records past their retention not deleted", extra={"fields": {"event": "database-purge-failed",
                                                                                     "error": type(exc).__name__}})
            return {}
        db.execute("RELEASE SAVEPOINT retention")
        return purged

    @staticmethod
    def _purge(db: sqlite3.Connection, cutoff: str) -> dict[str, int]:
        """Delete the cards issued before ``cutoff`` with their suggestions, and the feedback received before it."""
        suggestions = db.execute("DELETE FROM issued_suggestion WHERE card_uuid IN (SELECT uuid FROM issued_card WHERE issued_at < ?)",
                                 (cutoff,)).rowcount
        cards = db.execute("DELETE FROM issued_card WHERE issued_at < ?", (cutoff,)).rowcount
        feedback = db.execute("DELETE FROM feedback WHERE received_at < ?", (cutoff,)).rowcount
        return {"cards": cards, "suggestions": suggestions, "feedback": feedback}

    def record_cards(self, service_id: str, hook: str, hook_instance: str, cards: Iterable[IssuedCard], *,
                     retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        """Remember the cards of one response (and their suggestions), at most MAX_RECORDED_CARDS of them and
        MAX_RECORDED_SUGGESTIONS suggestions of each; not synced on its own (a power cut may lose the latest), since the
        clinician has the cards whatever happens to this record. Rows older than ``retention_days`` may be purged in the
        same write."""
        cards = list(cards)
        if not cards:
            return
        if len(cards) > MAX_RECORDED_CARDS or any(len(c.suggestions) > MAX_RECORDED_SUGGESTIONS for c in cards):
            log.warning("issued cards recorded in part", extra={"fields": {
                "event": "cards-recorded-in-part", "cards": len(cards), "suggestions": sum(len(c.suggestions) for c in cards),
                "most_cards": MAX_RECORDED_CARDS, "most_suggestions_per_card": MAX_RECORDED_SUGGESTIONS}})
            cards = cards[:MAX_RECORDED_CARDS]
        issued_at = _stamp(self.clock())
        card_rows = [(c.uuid, service_id, hook, hook_instance, c.action_id, c.topic, c.indicator, issued_at) for c in cards]
        suggestion_rows = [(s_uuid, c.uuid) for c in cards for s_uuid in c.suggestions[:MAX_RECORDED_SUGGESTIONS]]

        def insert(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO issued_card (uuid, service_id, hook, hook_instance, action_id, topic, indicator, issued_at)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", card_rows)
            db.executemany("INSERT INTO issued_suggestion (uuid, card_uuid) VALUES (?, ?) ON CONFLICT DO NOTHING", suggestion_rows)

        self._write(insert, "record of the issued cards", False, retention_days, pipelined=True)

    def record_cards_safely(self, service_id: str, hook: str, hook_instance: str, cards: Iterable[IssuedCard], *,
                            retention_days: int = DEFAULT_RETENTION_DAYS) -> bool:
        """record_cards, but a database failure is logged, not raised: the clinician still gets the cards."""
        try:
            self.record_cards(service_id, hook, hook_instance, cards, retention_days=retention_days)
        except (*DATABASE_ERRORS, StorageUnavailable) as exc:
            log.error("issued cards not recorded", extra={"fields": {"event": "database-error", "error": type(exc).__name__}})
            return False
        return True

    def record_feedback(self, service_id: str, items: Iterable[FeedbackItem], *, retention_days: int = DEFAULT_RETENTION_DAYS) -> int:
        """Store feedback items; the same item sent twice is kept once. Returns how many were new.

        All items are stored in one transaction, synced to disk before this returns; StorageUnavailable (503) when
        the database cannot take them, and then none of them is stored. Rows older than ``retention_days`` may be
        purged in the same write.
        """
        items = list(items)
        received = _stamp(self.clock())

        def insert(db: sqlite3.Connection) -> int:
            new = 0
            for item in items:
                known = db.execute("SELECT 1 FROM issued_card WHERE uuid = ? AND service_id = ?", (item.card, service_id)).fetchone() is not None
                reason = item.reason or {}
                cursor = db.execute(
                    "INSERT INTO feedback (service_id, card_uuid, outcome, accepted_suggestions, override_system, override_code,"
                    " override_display, comment_length, outcome_timestamp, received_at, card_known) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (service_id, item.card, item.outcome, json.dumps(item.accepted) if item.accepted else None, reason.get("system"),
                     reason.get("code"), reason.get("display"), item.comment_length, item.timestamp, received, int(known)))
                new += cursor.rowcount
            return new

        return self._write(insert, "feedback", True, retention_days)

    def feedback(self, card_uuid: str | None = None) -> list[dict[str, Any]]:
        """Stored feedback (all, or for one card), with the card it concerns."""
        query = ("SELECT f.*, c.action_id, c.topic, c.hook FROM feedback f LEFT JOIN issued_card c ON c.uuid = f.card_uuid"
                 + (" WHERE f.card_uuid = ?" if card_uuid else "") + " ORDER BY f.id")
        return self._database.read(lambda db: _rows(db, query, (card_uuid,) if card_uuid else ()))

    def query(self, *queries: str) -> list[list[dict[str, Any]]]:
        """The rows of each read-only query, as dicts, in one read of the database (the feedback report's counts)."""
        return self._database.read(lambda db: [_rows(db, query, ()) for query in queries])

    def issued(self, service_id: str, card_uuids: Iterable[str]) -> dict[str, tuple[str, set[str]]]:
        """The cards of these uuids this service issued (whichever instance issued them): action id and suggestion uuids.
        A database that cannot be read is StorageUnavailable (503), as for a write."""
        wanted = sorted(set(card_uuids))
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)
        query = (f"SELECT c.uuid AS card, c.action_id AS action_id, s.uuid AS suggestion FROM issued_card c "
                 f"LEFT JOIN issued_suggestion s ON s.card_uuid = c.uuid WHERE c.service_id = ? AND c.uuid IN ({marks})")
        found: dict[str, tuple[str, set[str]]] = {}
        try:
            rows = self._database.read(lambda db: _rows(db, query, (service_id, *wanted)))
        except DATABASE_ERRORS as exc:
            log.error("database read refused", extra={"fields": {"event": "database-unavailable", "read": "issued cards",
                                                                 "error": type(exc).__name__}})
            raise StorageUnavailable("the database cannot be read now to check the feedback against the cards issued; "
                                     "send it again later") from None
        for row in rows:
            entry = found.setdefault(row["card"], (row["action_id"], set()))
            if row["suggestion"]:
                entry[1].add(row["suggestion"])
        return found

    def card(self, card_uuid: str) -> dict[str, Any] | None:
        rows = self._database.read(lambda db: _rows(db, "SELECT * FROM issued_card WHERE uuid = ?", (card_uuid,)))
        return rows[0] if rows else None

    def run_calls_with(self, offload: Callable[[Callable[[], Any]], Any]) -> None:
        """Run every database call through ``offload`` (see SqliteFile.run_calls_with)."""
        self._database.run_calls_with(offload)

    def prepare(self, retention_days: int = DEFAULT_RETENTION_DAYS) -> None:
        """Open this process's database connection and run its first retention purge (a write of nothing else), so
        that its first request pays for neither; for a worker's warm-up after it forks. A database that cannot take
        it now is logged, not raised: requests then meet it as they would have."""
        try:
            self._database.open_connection()
            self._write(lambda db: None, "retention purge", False, retention_days)
        except (*DATABASE_ERRORS, StorageUnavailable) as exc:
            log.error("database not prepared at start", extra={"fields": {"event": "database-error", "error": type(exc).__name__}})

    def ready(self) -> bool:
        """The database answers and holds its tables."""
        def probe(db: sqlite3.Connection) -> None:
            for table in ("issued_card", "issued_suggestion", "feedback"):
                db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()

        try:
            self._database.read(probe)
        except DATABASE_ERRORS:
            return False
        return True


def _rows(db: Any, query: str, parameters: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The rows of a query as dicts (on either database: the names come from the cursor's description)."""
    cursor = db.execute(query, parameters)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
