"""The protocol as a FHIR NPM package (``.tgz``), the format FHIR servers and IG tooling load.

Layout: ``package/package.json`` (name, version, canonical, fhirVersions, dependencies...), one file per
resource ``package/{Type}-{id}.json``, and ``package/.index.json`` listing them (index-version 2).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from protocol.content import Content

FIXED_MTIME = 0  # reproducible archives: the same content gives the same bytes


def manifest(content: Content) -> dict[str, Any]:
    """package.json: the FHIR package fields."""
    pub = content.publication
    return {
        "name": pub["packageId"],
        "version": pub["version"],
        "canonical": pub["canonical"],
        "url": pub["canonical"],
        "title": pub["title"],
        "description": "Treatment protocol for back muscle spasm after physical therapy as FHIR R4 knowledge artifacts "
                       "(PlanDefinition, ActivityDefinition, Library, ValueSet).",
        "fhirVersions": [pub["fhirVersion"]],
        "dependencies": {"hl7.fhir.r4.core": "4.0.1"},
        "author": pub["publisher"],
        "license": pub.get("license", "Apache-2.0"),
        "type": "Conformance",
        "jurisdiction": "urn:iso:std:iso:3166#US",
    }


def index(content: Content) -> dict[str, Any]:
    """.index.json: one entry per resource file."""
    files = []
    for resource in content.resources:
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


def build_package(content: Content, out_dir: Path) -> Path:
    """Write ``{name}-{version}.tgz`` into out_dir and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pub = content.publication
    path = out_dir / f"{pub['packageId']}-{pub['version']}.tgz"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=FIXED_MTIME) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
            _add(archive, "package.json", manifest(content))
            _add(archive, ".index.json", index(content))
            for resource in content.resources:
                _add(archive, f"{resource['resourceType']}-{resource['id']}.json", resource)
    path.write_bytes(buffer.getvalue())
    return path
