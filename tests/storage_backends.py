"""The PostgreSQL server of the storage tests, when there is one: BACK_SPASM_CDS_TEST_POSTGRESQL names it (a URL whose
user may create databases; ``.ci/run`` starts one and sets it). Without it the PostgreSQL variants of the tests skip."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

POSTGRESQL = os.environ.get("BACK_SPASM_CDS_TEST_POSTGRESQL")
needs_postgresql = pytest.mark.skipif(not POSTGRESQL, reason="no PostgreSQL server: set BACK_SPASM_CDS_TEST_POSTGRESQL "
                                                             "(a postgresql:// URL whose user may create databases; .ci/run does)")
#: The back ends a storage test runs on: SQLite always, PostgreSQL when there is a server.
BACK_ENDS = ["sqlite", pytest.param("postgresql", marks=needs_postgresql)]


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
