"""The protocol as a FHIR NPM package (``.tgz``), the format FHIR servers and IG tooling load.

Layout: ``package/package.json`` (name, version, canonical, fhirVersions, dependencies...), one file per
resource ``package/{Type}-{id}.json`` (the artifacts, and on request the ImplementationGuide that describes the
package), and ``package/.index.json`` listing them (index-version 2).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from protocol.engine.content import Content

FIXED_MTIME = 0  # reproducible archives: the same content gives the same bytes


def manifest(content: Content) -> dict[str, Any]:
    """package.json: the FHIR package fields, every one from the protocol's publication.json."""
    pub = content.publication
    found: dict[str, Any] = {
        "name": pub["packageId"],
        "version": pub["version"],
        "canonical": pub["canonical"],
        "url": pub["canonical"],
        "title": pub["title"],
        "description": pub.get("description") or pub["title"],
        "fhirVersions": [pub["fhirVersion"]],
        "dependencies": {"hl7.fhir.r4.core": pub["fhirVersion"]},
        "author": pub["publisher"],
        "license": pub.get("license", "Apache-2.0"),
        "type": "Conformance",
    }
    jurisdiction = package_jurisdiction(pub)
    if jurisdiction:
        found["jurisdiction"] = jurisdiction
    return found


def package_jurisdiction(publication: dict[str, Any]) -> str | None:
    """The package's ``jurisdiction``, ``system#code`` of the first coding of the publication's jurisdiction, if any."""
    for concept in publication.get("jurisdiction") or []:
        for coding in (concept or {}).get("coding") or []:
            if coding.get("system") and coding.get("code"):
                return f"{coding['system']}#{coding['code']}"
    return None


def implementation_guide(content: Content) -> dict[str, Any]:
    """The ImplementationGuide resource of the package: its identity (packageId, version, canonical) and the list of
    the artifacts it holds, as FHIR servers and IG tooling read a package's contents."""
    pub = content.publication
    guide: dict[str, Any] = {
        "resourceType": "ImplementationGuide",
        "id": pub["packageId"],
        "url": f"{pub['canonical']}/ImplementationGuide/{pub['packageId']}",
        "version": pub["version"],
        "name": pub["name"],
        "title": pub["title"],
        "status": pub["status"],
        "experimental": pub["experimental"],
        "date": pub["date"],
        "publisher": pub["publisher"],
        "contact": pub.get("contact", []),
        "description": pub.get("description", []),
        "jurisdiction": pub.get("jurisdiction", []),
        "packageId": pub["packageId"],
        "license": pub.get("license", "Apache-2.0"),
        "fhirVersion": [pub["fhirVersion"]],
        "definition": {"resource": [
            {"reference": {"reference": f"{r['resourceType']}/{r['id']}"},
             "name": r.get("title") or r.get("name") or r["id"], "exampleBoolean": False}
            for r in content.resources]},
    }
    return {key: value for key, value in guide.items() if value != []}


def _resources(content: Content, with_guide: bool) -> list[dict[str, Any]]:
    """Every resource the package holds: the artifacts, then (``with_guide``) the ImplementationGuide."""
    return [*content.resources, implementation_guide(content)] if with_guide else list(content.resources)


def index(content: Content, with_guide: bool = False) -> dict[str, Any]:
    """.index.json: one entry per resource file (the artifacts, and the ImplementationGuide ``with_guide``)."""
    files = []
    for resource in _resources(content, with_guide):
        entry = {"filename": f"{resource['resourceType']}-{resource['id']}.json", "resourceType": resource["resourceType"], "id": resource["id"]}
        for key in ("url", "version", "kind", "type"):
            if isinstance(resource.get(key), str):
                entry[key] = resource[key]
        files.append(entry)
    return {"index-version": 2, "files": files}


def _add(archive: tarfile.TarFile, name: str, data: Any) -> None:
    raw = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    info = tarfile.TarInfo(f"package/{name}")
    info.size = len(raw)
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(raw))


def build_package(content: Content, out_dir: Path, with_guide: bool = True) -> Path:
    """Write ``{name}-{version}.tgz`` into out_dir and return its path; ``with_guide`` adds the ImplementationGuide
    resource describing the package, beside ``.index.json`` and listed in it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pub = content.publication
    path = out_dir / f"{pub['packageId']}-{pub['version']}.tgz"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=FIXED_MTIME) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            _add(archive, "package.json", manifest(content))
            _add(archive, ".index.json", index(content, with_guide))
            for resource in _resources(content, with_guide):
                _add(archive, f"{resource['resourceType']}-{resource['id']}.json", resource)
    path.write_bytes(buffer.getvalue())
    return path
