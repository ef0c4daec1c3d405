"""The protocol's artifacts as one Bundle, for FHIR servers (transaction) or for exchange (collection)."""

from __future__ import annotations

import copy
import uuid
from typing import Any, Literal
from urllib.parse import quote, urlencode

from protocol.engine.content import Content

BundleType = Literal["transaction", "collection"]


def artifact_bundle(content: Content, bundle_type: BundleType = "transaction", conditional: bool = False) -> dict[str, Any]:
    """Every artifact in dependency order; a transaction PUTs ``Type/id`` so importing it twice changes nothing.

    ``conditional`` (transactions only): each artifact is created (POST) only if the server has none with that
    ``url`` and ``version`` (``ifNoneExist``), so that publishing into a server that already holds other content, or
    another copy of this version under other ids, neither overwrites nor duplicates anything."""
    if bundle_type not in ("transaction", "collection"):
        raise ValueError(f"bundle type must be transaction or collection, not {bundle_type!r}")
    if conditional and bundle_type != "transaction":
        raise ValueError("a conditional bundle is a transaction: conditional creates need a server to process them")
    entries = []
    for resource in content.resources:
        entry: dict[str, Any] = {"fullUrl": resource.get("url") or content.canonical(resource["resourceType"], resource["id"]),
                                 "resource": copy.deepcopy(resource)}
        if conditional:
            entry["fullUrl"] = _create_full_url(resource)
            entry["request"] = {"method": "POST", "url": resource["resourceType"], "ifNoneExist": _if_none_exist(resource)}
        elif bundle_type == "transaction":
            entry["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": f"{content.publication['name']}-{content.publication['version']}".replace(".", "-"),
        "type": bundle_type,
        "entry": entries,
    }


def _if_none_exist(resource: dict[str, Any]) -> str:
    """The search that finds this artifact on a server: ``url=…&version=…`` (``url`` alone without a version)."""
    pairs = [("url", resource["url"])] + ([("version", resource["version"])] if resource.get("version") else [])
    return urlencode(pairs, quote_via=quote, safe=":/")


def _create_full_url(resource: dict[str, Any]) -> str:
    """A ``urn:uuid`` for a created entry (the server names it), the same for the same artifact and version, so that
    the same content gives the same Bundle."""
    name = f"{resource['resourceType']}|{resource.get('url', resource['id'])}|{resource.get('version', '')}"
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"
