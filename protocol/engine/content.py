"""The protocols' knowledge artifacts: read once from their content folders and indexed by type, id and canonical url.

One folder holds one protocol (its resources and its ``publication.json``); several folders are merged into one
``Content`` with the same lookups, each resource keeping the folder, and so the publication, it came from."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.engine.terminology import Terminology, split_canonical

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONTENT_ROOT = PACKAGE_DIR / "content"
CONTENT_DIR = CONTENT_ROOT / "back-spasm"
PUBLICATION_NAME = "publication.json"
#: Files a content folder keeps for its generators (``valuesets.source.json``): read by them, never as a resource.
SOURCE_SUFFIX = ".source.json"
PUBLICATION_FILE = CONTENT_DIR / PUBLICATION_NAME

#: Order of resource types in bundles and packages: what a resource refers to comes before it.
TYPE_ORDER = ("CodeSystem", "ValueSet", "StructureDefinition", "Library", "ActivityDefinition", "PlanDefinition")


class ContentError(Exception):
    """The content folder cannot be read (missing folder, unreadable JSON)."""


@dataclass
class Content:
    """Every artifact of one protocol (or of several, merged), as plain JSON, with where it came from.

    ``protocols`` are the one-folder contents it is made of (itself for one folder); ``directory``, ``name`` and
    ``publication`` are those of the first, the default protocol; ``protocol_of`` names a resource's own."""

    directory: Path
    publication: dict[str, Any]
    resources: list[dict[str, Any]]
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    protocols: list["Content"] = field(default_factory=list, repr=False, compare=False)
    terminology: Terminology = field(init=False)
    _by_url: dict[str, list[dict[str, Any]]] = field(init=False, repr=False)
    _by_key: dict[tuple[str, str], dict[str, Any]] = field(init=False, repr=False)
    _owner: dict[tuple[str, str], "Content"] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.resources.sort(key=_sort_key)
        self._by_key = {(r["resourceType"], r.get("id", "")): r for r in self.resources}
        self._by_url = {}
        for resource in self.resources:
            if isinstance(resource.get("url"), str):
                self._by_url.setdefault(resource["url"], []).append(resource)
        self.terminology = Terminology(r for r in self.resources if r["resourceType"] == "ValueSet")
        if not self.protocols:
            self.protocols = [self]
        merged = len(self.protocols) > 1 or self.protocols[0] is not self
        self._owner = {key: part for part in self.protocols for key in part._keys()} if merged else {}

    def _keys(self) -> list[tuple[str, str]]:
        return [(r["resourceType"], str(r.get("id", ""))) for r in self.resources]

    @property
    def name(self) -> str:
        """The protocol's short name: its folder's name (the page of the protocol is ``/protocol/{name}``)."""
        return self.directory.name

    def protocol_of(self, resource: dict[str, Any]) -> "Content":
        """The one-folder content a resource belongs to (this content itself when it is one folder)."""
        return self._owner.get((resource.get("resourceType", ""), str(resource.get("id", ""))), self)

    def publication_of(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The publication facts (canonical base, version, publisher...) of the protocol a resource belongs to."""
        return self.protocol_of(resource).publication

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The resource of that type and id, if loaded."""
        return self._by_key.get((resource_type, resource_id))

    def resolve(self, canonical: str, resource_type: str | None = None) -> dict[str, Any] | None:
        """The resource a canonical (``url`` or ``url|version``) names, optionally of a given type."""
        url, version = split_canonical(canonical)
        for resource in self._by_url.get(url, []):
            if (version is None or resource.get("version") == version) and resource_type in (None, resource["resourceType"]):
                return resource
        return None

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        """All loaded resources of one type, in file-name order."""
        return [r for r in self.resources if r["resourceType"] == resource_type]

    def file_of(self, resource: dict[str, Any]) -> Path | None:
        """The file a resource was read from."""
        return self.files.get((resource["resourceType"], resource.get("id", "")))

    def canonical(self, resource_type: str, resource_id: str) -> str:
        """The canonical url a resource has: the base of its protocol's publication.json, then ``Type/id``."""
        owner = self._owner.get((resource_type, resource_id), self)
        return f"{owner.publication['canonical']}/{resource_type}/{resource_id}"

    def protocol(self, name: str) -> "Content | None":
        """The protocol of that name (its folder's name), if loaded."""
        return next((part for part in self.protocols if part.name == name), None)


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
        if path.name == PUBLICATION_NAME or path.name.endswith(SOURCE_SUFFIX):
            continue
        resource = read_json(path)
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise ContentError(f"{path}: not a FHIR resource (no resourceType)")
        resources.append(resource)
        files[(resource["resourceType"], str(resource.get("id", "")))] = path
    return Content(directory=directory, publication=publication, resources=resources, files=files)


def protocol_folders(root: Path | None = None) -> list[Path]:
    """The protocol folders under a content root: every sub-folder holding a publication.json, by name."""
    root = Path(root) if root else CONTENT_ROOT
    return sorted(folder for folder in root.iterdir() if (folder / PUBLICATION_NAME).is_file()) if root.is_dir() else []


def load_contents(directories: Sequence[Path | str] | None = None) -> Content:
    """Read several protocol folders (default: every one under ``protocol/content/``) into one merged Content."""
    folders = [Path(d) for d in directories] if directories else protocol_folders() or [CONTENT_DIR]
    return merge_contents([load_content(folder) for folder in folders])


def merge_contents(parts: Sequence[Content]) -> Content:
    """One Content over several protocols, the first the default. Two protocols may not define the same type and
    id, nor the same canonical url and version, nor share a name: each is a load error naming both files."""
    if not parts:
        raise ContentError("no content folder given")
    if len(parts) == 1:
        return parts[0]
    keys: dict[tuple[str, str], Path | None] = {}
    canonicals: dict[tuple[str, str], Path | None] = {}
    names: dict[str, Path] = {}
    for part in parts:
        if part.name in names:
            raise ContentError(f"{part.directory} and {names[part.name]}: two protocols named {part.name!r} "
                               "(a protocol is named after its folder)")
        names[part.name] = part.directory
        for resource in part.resources:
            path = part.file_of(resource)
            key = (resource["resourceType"], str(resource.get("id", "")))
            if key in keys:
                raise ContentError(f"{path} and {keys[key]}: two protocols define {key[0]}/{key[1]}")
            keys[key] = path
            if isinstance(resource.get("url"), str):
                canonical = (resource["url"], str(resource.get("version", "")))
                if canonical in canonicals:
                    raise ContentError(f"{path} and {canonicals[canonical]}: two protocols define "
                                       f"{canonical[0]}|{canonical[1]}")
                canonicals[canonical] = path
    first = parts[0]
    return Content(directory=first.directory, publication=first.publication,
                   resources=[r for part in parts for r in part.resources],
                   files={key: path for part in parts for key, path in part.files.items()}, protocols=list(parts))


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
