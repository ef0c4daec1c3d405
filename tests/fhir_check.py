"""Run the independent FHIR R4 checker (../shared/tools/fhir-check, Node) from the tests.

CI installs it in a scratch copy and points FHIR_CHECK_DIR at it; without Node or the tool the
tests that need it are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CANDIDATES = [os.environ.get("FHIR_CHECK_DIR", ""), "/work/fhir-check"]


def tool_dir() -> Path | None:
    for candidate in CANDIDATES:
        if candidate and (Path(candidate) / "check.mjs").is_file() and (Path(candidate) / "node_modules").is_dir():
            return Path(candidate)
    return None


def require_tool() -> Path:
    folder = tool_dir()
    if folder is None or shutil.which("node") is None:
        pytest.skip("fhir-check not installed: set FHIR_CHECK_DIR to a copy of ../shared/tools/fhir-check with node_modules (see .ci/run)")
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
