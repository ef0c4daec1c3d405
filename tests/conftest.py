"""Shared test fixtures."""

from __future__ import annotations

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
