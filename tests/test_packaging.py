"""What the installed package needs besides Python modules is declared as package data."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shipped_files(package: str) -> list[Path]:
    """The files of a package folder that belong to the project: git's tracked files in a checkout (a tool's cache
    or a scratch file is not the project's), every file outside hidden folders elsewhere."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", package], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in (ROOT / package).rglob("*") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_every_data_file_of_the_packages_is_declared_as_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = config["tool"]["setuptools"]["package-data"]
    for package in ("protocol", "service"):
        patterns = declared.get(package, [])
        for path in shipped_files(package):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT / package).as_posix()
            assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), f"{package}/{relative} is not installed"
