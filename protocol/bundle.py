"""The protocol's artifacts as one Bundle, for FHIR servers (transaction) or for exchange (collection)."""

from __future__ import annotations

import copy
from typing import Any, Literal

from protocol.content import Content

BundleType = Literal["transaction", "collection"]


def artifact_bundle(content: Content, bundle_type: BundleType = "transaction") -> dict[str, Any]:
    """Every artifact in dependency order; a transaction PUTs ``Type/id`` so importing it twice changes nothing."""
    if bundle_type not in ("transaction", "collection"):
        raise ValueError(f"bundle type must be transaction or collection, not {bundle_type!r}")
    entries = []
    for resource in content.resources:
        entry: dict[str, Any] = {"fullUrl": resource.get("url") or content.canonical(resource["resourceType"], resource["id"]),
                                 "resource": copy.deepcopy(resource)}
        if bundle_type == "transaction":
            entry["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": f"{content.publication['name']}-{content.publication['version']}".replace(".", "-"),
        "type": bundle_type,
        "entry": entries,
    }
