"""Shared test fixtures."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest


@pytest.fixture(autouse=True)
def settled_httpserver(request):
    """After a test that used the shared loopback FHIR server, wait until requests still in flight have landed.

    A hook call that gives up on its first failed read (a 412) answers while its other reads may already be on the
    wire; the server logs them a moment later. Waiting for the log to stay still before pytest-httpserver clears
    it keeps those late requests from showing up in the next test's log.
    """
    server = request.getfixturevalue("httpserver") if "httpserver" in request.fixturenames else None
    yield
    if server is None or not server.log:
        return  # no read reached the server: none can be in flight behind it
    deadline = time.monotonic() + 2.0
    seen, still_since = len(server.log), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < 0.15:
        time.sleep(0.05)
        if len(server.log) != seen:
            seen, still_since = len(server.log), time.monotonic()


@pytest.fixture
def access_log():
    """The service's JSON log lines written while the test runs, as a function that returns them parsed."""
    from service.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("back_spasm_cds")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def quiet_service_log():
    """Silence the service's logger (unexpected errors are logged with their trace): for tests that look only at what
    the client gets."""
    logger = logging.getLogger("back_spasm_cds")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
