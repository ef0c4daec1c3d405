"""The shared PostgreSQL database of many service instances: connections, transactions, retries and the schema's migrations.

Used when the ``database`` setting is a ``postgresql://`` URL (see service.cds_hooks.feedback.open_database). It offers what SqliteFile offers the
stores (``write``, ``read``, ``run_calls_with``), so the stores' statements run unchanged on either database: they are
written once with ``?`` placeholders, which PgSession turns into the driver's ``%s`` (values are always sent apart
from the statement, never formatted into it).

The driver is psycopg 3. A process keeps its idle connections on a stack: a call takes one (or opens one when none
is idle) and puts it back when it is done, so a process holds at most one connection per thread making a call at once
(under gevent, the worker's pool of real threads), and a connection opened by one thread (by the worker's warm-up, see
``open_connection``) serves the calls of every other. A connection lost is closed and not put back. A pool object of
psycopg's own would add background threads that gevent's patching turns into greenlets of another thread.

Each round trip to the server costs a wake-up of its process on both sides, the largest part of a write on a busy
machine, so writes make few: a write of one statement runs as its own transaction (``one_statement``: no BEGIN and
COMMIT of their own), and a write whose statements need no answer until the end is sent as one pipeline
(``pipelined``: BEGIN, the statements and COMMIT in one exchange).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from service.errors import SchemaTooNew

log = logging.getLogger("back_spasm_cds.postgresql")

Result = TypeVar("Result")

#: Errors after which a call is worth another attempt on a new connection: the connection lost or refused, a deadlock,
#: a serialization failure or a lock waited for past LOCK_TIMEOUT_MS (all OperationalError), a connection found closed.
RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError)

#: Seconds a connection attempt may take before the database counts as down (then a write is tried again or refused).
CONNECT_TIMEOUT_SECONDS = 3
#: Milliseconds one statement may wait for a row lock another transaction holds before it is cancelled and tried again.
LOCK_TIMEOUT_MS = 2000
#: Key of the advisory lock that lets one instance at a time apply the schema's migrations.
MIGRATION_LOCK = 0x62_73_63_64  # "bscd"

#: The schema, one migration per version, each applied once, in order, in one transaction; never edit a released one,
#: add the next. Only ids, codes, times and counts are kept (see service.cds_hooks.feedback).
MIGRATIONS: Sequence[Sequence[str]] = (
    (
        """CREATE TABLE issued_card (
    uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    action_id TEXT NOT NULL,
    topic TEXT,
    indicator TEXT NOT NULL,
    issued_at TEXT NOT NULL
)""",
        """CREATE TABLE issued_suggestion (
    uuid TEXT PRIMARY KEY,
    card_uuid TEXT NOT NULL REFERENCES issued_card(uuid) ON DELETE CASCADE
)""",
        """CREATE TABLE feedback (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
        "CREATE INDEX feedback_card ON feedback(card_uuid)",
        "CREATE INDEX feedback_received ON feedback(received_at)",
        "CREATE INDEX issued_card_time ON issued_card(issued_at)",
        "CREATE INDEX issued_suggestion_card ON issued_suggestion(card_uuid)",
        "CREATE TABLE seen_jti (iss TEXT NOT NULL, jti TEXT NOT NULL, exp BIGINT NOT NULL, PRIMARY KEY (iss, jti))",
        "CREATE INDEX seen_jti_exp ON seen_jti(exp)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _call(function: Callable[[], Result]) -> Result:
    return function()


class PgSession:
    """A connection as the stores' statements use it: ``execute`` and ``executemany`` with ``?`` placeholders."""

    def __init__(self, connection: psycopg.Connection):
        self.connection = connection

    @staticmethod
    def _statement(query: str) -> str:
        """The statement in the driver's placeholder style (the stores' statements hold no literal ``?`` or ``%``)."""
        return query.replace("?", "%s")

    def execute(self, query: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor:
        """Run one statement; its cursor (rowcount, fetchone, description, iteration)."""
        return self.connection.execute(self._statement(query), tuple(parameters))

    def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each row of parameters."""
        rows = [tuple(row) for row in rows]
        if rows:
            with self.connection.cursor() as cursor:
                cursor.executemany(self._statement(query), rows)


class PostgresDatabase:
    """One PostgreSQL database shared by every instance, with the process's idle connections on a stack.

    A write is one transaction. A durable write commits with ``synchronous_commit`` as the server has it (on by default:
    flushed to the server's disk before the commit returns); a write that may be lost with the server's power
    (``durable=False``) commits with it off. A write that loses its connection, meets a deadlock or waits past
    LOCK_TIMEOUT_MS for a row is rolled back and tried again on a fresh connection, a bounded number of times; then it
    is refused with StorageUnavailable (503, Retry-After), as SqliteFile refuses a write to a locked file.

    The constructor applies the missing migrations (on a connection it closes again, so that worker processes forked
    after it inherit none), and refuses a database migrated by a newer version.
    """

    def __init__(self, url: str, unavailable: Callable[[str, Exception, int], Exception],
                 attempts: Callable[[], int], backoff: Callable[[int], float]):
        self.url = url
        self.path = url
        self.offload: Callable[[Callable[[], Any]], Any] = _call  #: runs each database call (see run_calls_with)
        self._unavailable = unavailable
        self._attempts = attempts
        self._backoff = backoff
        self._idle: list[PgSession] = []  #: connections of this process no call is using, the last put back on top
        self._pid = os.getpid()  #: the process the idle connections belong to
        self._inherited: list[PgSession] = []  #: idle connections of a parent process: kept, never used or closed
        self._lock = threading.Lock()
        with self._open() as connection:
            migrate(connection)

    def _open(self) -> psycopg.Connection:
        """A new connection in autocommit mode (transactions are begun explicitly), with the session's lock timeout set
        after connecting, so that ``options`` given in the URL are kept."""
        connection = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="back-spasm-cds")
        try:
            connection.execute("SELECT set_config('lock_timeout', %s, false)", (f"{LOCK_TIMEOUT_MS}ms",))
        except BaseException:
            connection.close()
            raise
        return connection

    def _take(self) -> PgSession:
        """An idle connection of this process, else a new one.

        Connections idle in the parent process when this one was forked are left alone, neither used nor closed:
        closing one here would end the parent's session on the same socket."""
        with self._lock:
            if self._pid != os.getpid():
                self._inherited.extend(self._idle)
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                session = self._idle.pop()
                if not session.connection.closed:
                    return session
        return PgSession(self._open())

    def _give_back(self, session: PgSession) -> None:
        """Put a connection back for the next call: only an open one of this process, outside any transaction."""
        if session.connection.closed or session.connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._close(session)
            return
        with self._lock:
            (self._idle if self._pid == os.getpid() else self._inherited).append(session)

    @staticmethod
    def _close(session: PgSession) -> None:
        """Close a connection; one that cannot even be closed (its server gone) is dropped."""
        try:
            session.connection.close()
        except psycopg.Error:
            pass

    def open_connection(self) -> None:
        """Have one connection of this process idle (opened now unless one is), so that the process's first call does
        not wait for the server's connection set-up (a worker's warm-up calls it after the fork)."""
        self.offload(lambda: self._give_back(self._take()))

    def write(self, work: Callable[[PgSession], Result], what: str, durable: bool = True, *, one_statement: bool = False,
              pipelined: bool = False) -> Result:
        """``work(session)`` in one transaction; its result once committed. ``what`` names the write in logs.

        ``one_statement``: ``work`` runs a single statement, which the server runs as its own transaction (one round
        trip; only for a durable write). ``pipelined``: ``work`` reads no result of its statements, and the
        transaction is sent as one pipeline."""
        def run(session: PgSession) -> Result:
            if one_statement and durable:
                return work(session)
            if pipelined:
                return self._pipelined_transaction(session, work, durable)
            return self._transaction(session, work, durable)

        attempt = 1
        while True:
            try:
                return self.offload(lambda: self._on_connection(run))
            except RETRYABLE as exc:
                if attempt >= self._attempts():
                    raise self._unavailable(what, exc, attempt) from None
                log.info("database write tried again", extra={"fields": {"event": "database-retry", "write": what, "attempt": attempt,
                                                                          "error": type(exc).__name__}})
            except psycopg.DatabaseError as exc:
                if type(exc) not in (psycopg.DatabaseError, psycopg.InternalError):  # integrity, programming, data: the code's fault
                    raise
                raise self._unavailable(what, exc, attempt) from None
            time.sleep(self._backoff(attempt))
            attempt += 1

    def read(self, work: Callable[[PgSession], Result]) -> Result:
        """``work(session)`` outside a write transaction; tried once more on a fresh connection if the connection was lost."""
        try:
            return self.offload(lambda: self._on_connection(work))
        except RETRYABLE:
            return self.offload(lambda: self._on_connection(work))

    def run_calls_with(self, offload: Callable[[Callable[[], Any]], Any]) -> None:
        """Run every database call through ``offload`` (under gevent, the worker's pool of real threads: the driver
        blocks while it waits for the server)."""
        self.offload = offload

    def _on_connection(self, call: Callable[[PgSession], Result]) -> Result:
        """``call`` on a connection taken for it and put back after it; one that failed with a RETRYABLE error is closed
        instead, so that the next call opens a new one."""
        session = self._take()
        try:
            result = call(session)
        except RETRYABLE:
            self._close(session)
            raise
        except BaseException:
            self._give_back(session)
            raise
        self._give_back(session)
        return result

    @staticmethod
    def _transaction(session: PgSession, work: Callable[[PgSession], Result], durable: bool) -> Result:
        """``work`` in one transaction on ``session``: committed when it returns, rolled back when it raises."""
        with session.connection.transaction():
            if not durable:
                session.execute("SET LOCAL synchronous_commit TO OFF")
            return work(session)


    @staticmethod
    def _pipelined_transaction(session: PgSession, work: Callable[[PgSession], Result], durable: bool) -> Result:
        """``work`` between BEGIN and COMMIT sent as one pipeline: one exchange with the server. (psycopg's own
        ``transaction()`` inside a pipeline waits for the server at its start and end.) A statement that fails makes the
        server skip the rest, COMMIT included, and the error is raised when the pipeline ends; the connection is then
        left in a failed transaction, and closed rather than put back (see _give_back)."""
        with session.connection.pipeline():
            session.execute("BEGIN")
            if not durable:
                session.execute("SET LOCAL synchronous_commit TO OFF")
            result = work(session)
            session.execute("COMMIT")
        return result


def migrate(connection: psycopg.Connection) -> list[int]:
    """Apply the migrations the database lacks, under an advisory lock so that instances starting together apply each
    once; the versions applied. SchemaTooNew when the database is ahead of this version."""
    applied = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        current = (row[0] if row else None) or 0
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(f"the database's schema is version {current}, newer than this service's {SCHEMA_VERSION}: "
                               "run the newer service, or a database of its own")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                connection.execute(statement)
            connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            applied.append(version)
    if applied:
        log.warning("database schema migrated", extra={"fields": {"event": "database-migrated", "versions": applied}})
    return applied
