"""The PostgreSQL server of the storage tests, when there is one: BACK_SPASM_CDS_TEST_POSTGRESQL names it (a URL whose
user may create databases; ``.ci/run`` starts one and sets it). Without it the PostgreSQL variants of the tests skip.

BACK_SPASM_CDS_TEST_DATABASE chooses the database of the service tests' applications (``service_database``, read by
tests.service_helpers.make_app): ``sqlite`` (the default) or ``postgresql``; ``.ci/run`` runs the service tests both ways.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest

POSTGRESQL = os.environ.get("BACK_SPASM_CDS_TEST_POSTGRESQL")
needs_postgresql = pytest.mark.skipif(not POSTGRESQL, reason="no PostgreSQL server: set BACK_SPASM_CDS_TEST_POSTGRESQL "
                                                             "(a postgresql:// URL whose user may create databases; .ci/run does)")
#: The back ends a storage test runs on: SQLite always, PostgreSQL when there is a server.
BACK_ENDS = ["sqlite", pytest.param("postgresql", marks=needs_postgresql)]
#: The back end of the service tests' applications: ``sqlite`` or ``postgresql``.
SERVICE_DATABASE = os.environ.get("BACK_SPASM_CDS_TEST_DATABASE", "sqlite")


def service_database(folder: str | Path) -> str:
    """The database setting of a service test's application: an SQLite file in the test's folder, or with
    BACK_SPASM_CDS_TEST_DATABASE=postgresql a fresh, empty schema on the test server (``fresh_schema``)."""
    if SERVICE_DATABASE == "sqlite":
        return str(Path(folder) / "cds.sqlite")
    if SERVICE_DATABASE != "postgresql":
        raise ValueError(f"BACK_SPASM_CDS_TEST_DATABASE must be sqlite or postgresql, not {SERVICE_DATABASE!r}")
    if not POSTGRESQL:
        raise RuntimeError("BACK_SPASM_CDS_TEST_DATABASE=postgresql needs a server: set BACK_SPASM_CDS_TEST_POSTGRESQL")
    return fresh_schema()


def fresh_schema() -> str:
    """The URL of a new, empty schema on the test server, that every connection made with it searches first.

    To the service it is a database of its own (its statements name no schema: its tables, migrations and their record
    all go there), made in about a millisecond where a database takes a few hundred, so every application of the service
    tests can have one. Left for the server to drop (.ci/run removes its cluster at the end).
    """
    from psycopg import sql

    name = f"cds_test_{uuid.uuid4().hex[:16]}"
    _admin().execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    parts = urlsplit(POSTGRESQL)
    query = parse_qsl(parts.query) + [("options", f"-c search_path={name}")]
    return parts._replace(query=urlencode(query, quote_via=quote)).geturl()


_ADMIN: list[Any] = []


def _admin() -> Any:
    """One autocommit connection to the test server, kept for the test session."""
    import psycopg

    if not _ADMIN or _ADMIN[0].closed:
        _ADMIN[:] = [psycopg.connect(POSTGRESQL, autocommit=True)]
    return _ADMIN[0]


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server (its URL), dropped afterwards with any connection left to it."""
    import psycopg
    from psycopg import sql

    name = f"cds_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRESQL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(POSTGRESQL)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(POSTGRESQL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def admin_query(url: str, query: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a test database as the test server's user, outside the service; its rows."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(query, parameters)
        return cursor.fetchall() if cursor.description else []


def admin_rows(url: str, query: str) -> list[dict[str, Any]]:
    """The rows of a query on a test database as dicts."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as db:
        return db.execute(query).fetchall()
