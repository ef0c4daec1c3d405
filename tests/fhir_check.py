"""Run the independent FHIR R4 checker (fhir-check, Node.js 20) from the tests.

The tool is not part of the project: the tests find it through FHIR_CHECK_DIR, a folder holding its
check.mjs and node_modules (.ci/run installs a scratch copy of ../shared/tools/fhir-check there). Without
Node or the tool the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def tool_dir() -> Path | None:
    """The folder FHIR_CHECK_DIR names, if it holds an installed fhir-check."""
    candidate = os.environ.get("FHIR_CHECK_DIR", "")
    if candidate and (Path(candidate) / "check.mjs").is_file() and (Path(candidate) / "node_modules").is_dir():
        return Path(candidate)
    return None


def require_tool() -> Path:
    """The fhir-check folder; skips the calling test, saying what is missing, when the tool cannot run."""
    folder = tool_dir()
    if folder is None:
        pytest.skip("fhir-check not installed: set FHIR_CHECK_DIR to a folder with fhir-check and its node_modules (see .ci/run)")
    if shutil.which("node") is None:
        pytest.skip("Node.js not found: fhir-check needs node (20 or newer) on the PATH")
    return folder


def fhir_check(*args: str, data: dict | list | None = None, tmp_path: Path | None = None) -> tuple[int, dict]:
    """Run check.mjs with --json; data, when given, is written to a file appended to the arguments."""
    folder = require_tool()
    argv = ["node", str(folder / "check.mjs"), "--json", *args]
    if data is not None:
        path = (tmp_path or Path("/tmp")) / "fhir-check-input.json"
        path.write_text(json.dumps(data))
        argv.append(str(path))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report = {"stdout": proc.stdout, "stderr": proc.stderr}
    return proc.returncode, report
