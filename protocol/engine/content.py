"""The protocol's knowledge artifacts: read once from the content folder and indexed by type, id and canonical url."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.engine.terminology import Terminology, split_canonical

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONTENT_DIR = PACKAGE_DIR / "content" / "back-spasm"
PUBLICATION_NAME = "publication.json"
PUBLICATION_FILE = CONTENT_DIR / PUBLICATION_NAME

#: Order of resource types in bundles and packages: what a resource refers to comes before it.
TYPE_ORDER = ("CodeSystem", "ValueSet", "StructureDefinition", "Library", "ActivityDefinition", "PlanDefinition")


class ContentError(Exception):
    """The content folder cannot be read (missing folder, unreadable JSON)."""


@dataclass
class Content:
    """Every artifact of the protocol, as plain JSON, with where it came from."""

    directory: Path
    publication: dict[str, Any]
    resources: list[dict[str, Any]]
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    terminology: Terminology = field(init=False)
    _by_url: dict[str, dict[str, Any]] = field(init=False, repr=False)
    _by_key: dict[tuple[str, str], dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.resources.sort(key=_sort_key)
        self._by_key = {(r["resourceType"], r.get("id", "")): r for r in self.resources}
        self._by_url = {r["url"]: r for r in self.resources if isinstance(r.get("url"), str)}
        self.terminology = Terminology(r for r in self.resources if r["resourceType"] == "ValueSet")

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The resource of that type and id, if loaded."""
        return self._by_key.get((resource_type, resource_id))

    def resolve(self, canonical: str, resource_type: str | None = None) -> dict[str, Any] | None:
        """The resource a canonical (``url`` or ``url|version``) names, optionally of a given type."""
        url, version = split_canonical(canonical)
        resource = self._by_url.get(url)
        if resource is None or (version is not None and resource.get("version") != version):
            return None
        if resource_type is not None and resource["resourceType"] != resource_type:
            return None
        return resource

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        """All loaded resources of one type, in file-name order."""
        return [r for r in self.resources if r["resourceType"] == resource_type]

    def file_of(self, resource: dict[str, Any]) -> Path | None:
        """The file a resource was read from."""
        return self.files.get((resource["resourceType"], resource.get("id", "")))

    def canonical(self, resource_type: str, resource_id: str) -> str:
        """The canonical url a resource of the protocol has (one base for all, from publication.json)."""
        return f"{self.publication['canonical']}/{resource_type}/{resource_id}"


def _sort_key(resource: dict[str, Any]) -> tuple[int, str]:
    rtype = resource.get("resourceType", "")
    rank = TYPE_ORDER.index(rtype) if rtype in TYPE_ORDER else len(TYPE_ORDER)
    return rank, str(resource.get("id", ""))


def read_json(path: Path) -> Any:
    """Parse one JSON file; a problem names the file and the position."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentError(f"{path}: cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ContentError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc


def load_content(directory: Path | None = None, publication_file: Path | None = None) -> Content:
    """Read every ``*.json`` of the content folder (one resource a file) and the publication metadata."""
    directory = Path(directory) if directory else CONTENT_DIR
    if not directory.is_dir():
        raise ContentError(f"{directory}: content folder not found")
    publication_file = Path(publication_file) if publication_file else publication_for(directory)
    publication = read_json(publication_file)
    if not isinstance(publication, dict):
        raise ContentError(f"{publication_file}: not a JSON object of publication metadata")
    resources: list[dict[str, Any]] = []
    files: dict[tuple[str, str], Path] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name == PUBLICATION_NAME:
            continue
        resource = read_json(path)
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise ContentError(f"{path}: not a FHIR resource (no resourceType)")
        resources.append(resource)
        files[(resource["resourceType"], str(resource.get("id", "")))] = path
    return Content(directory=directory, publication=publication, resources=resources, files=files)


def publication_for(directory: Path) -> Path:
    """The publication.json of a content folder: inside it, else beside it. Inside wins, so that a content folder
    copied anywhere with its publication.json is read whole, whatever lies next to it."""
    inside = directory / PUBLICATION_NAME
    beside = directory.parent / PUBLICATION_NAME
    for candidate in (inside, beside):
        if candidate.is_file():
            return candidate
    raise ContentError(f"{directory}: no {PUBLICATION_NAME} inside the content folder or beside it ({inside} or {beside}); "
                       "it holds the canonical base, version and publisher of every artifact")


@dataclass(frozen=True)
class ContentSource:
    """Which content folder a command reads, and why that one (said on the command line)."""

    directory: Path
    reason: str

    def describe(self) -> str:
        """One line for the user: the folder and why it was chosen."""
        return f"content: {self.directory} ({self.reason})"


def find_checkout(start: Path) -> Path | None:
    """The root of a back-spasm-cds source checkout holding ``start`` (the folder or one of its parents), if any.

    A checkout is a folder with this project's ``pyproject.toml`` and a ``protocol/content/back-spasm`` folder: a protocol
    author edits the content there, and the commands run inside it should read those edits rather than the copy
    installed with the package."""
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if (folder / "protocol" / "content" / "back-spasm").is_dir() and pyproject.is_file():
            try:
                text = pyproject.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if re.search(r'^name\s*=\s*"back-spasm-cds"\s*$', text, re.MULTILINE):
                return folder
    return None


def locate_content(explicit: Path | None = None, cwd: Path | None = None) -> ContentSource:
    """The content folder a command reads: ``--content`` when given, else the ``protocol/content/back-spasm`` of the checkout
    the command runs in, else the copy installed with the package."""
    if explicit is not None:
        return ContentSource(Path(explicit), "--content")
    checkout = find_checkout((cwd or Path.cwd()).resolve())
    if checkout is not None:
        return ContentSource(checkout / "protocol" / "content" / "back-spasm", f"the checkout at {checkout}")
    return ContentSource(CONTENT_DIR, "the copy installed with the package")
