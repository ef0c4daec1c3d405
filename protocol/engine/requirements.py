"""What an artifact needs: its data requirements and the artifacts it depends on.

One place for both answers, so that the CDS Hooks prefetch, ``$data-requirements`` (a ``module-definition``
Library, as the Clinical Reasoning module defines the operation) and ``$package`` (a Bundle of the artifact and
everything it depends on) cannot disagree about what a plan reads or which artifacts it needs.

Dependencies are found by looking at every string of an artifact, and every URL inside a string (FHIRPath
``memberOf('…')``), that names an artifact of the content: a library, an activity definition, a ValueSet, a
CodeSystem, a StructureDefinition named by an extension url. They are followed transitively. A URL inside an
expression counts only when it names terminology.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from protocol.engine.content import Content

Json = dict[str, Any]

LIBRARY_TYPE = "http://terminology.hl7.org/CodeSystem/library-type"
#: A URL written inside a string, such as the ValueSet of a FHIRPath ``memberOf('…')``.
URL_IN_TEXT = re.compile(r"https?://[^\s'\"`)<>]+")
#: What a URL inside an expression makes a dependency: terminology (``memberOf``). Other URLs there are values
#: compared with the data (a CarePlan's ``instantiatesCanonical``), not artifacts the logic needs.
TERMINOLOGY = ("ValueSet", "CodeSystem")
#: Elements of type RelatedArtifact in the artifacts.
RELATED_ARTIFACT_ELEMENTS = ("relatedArtifact", "documentation")


def _strings(value: Any, links: bool = False) -> Iterator[str]:
    """Every string inside a JSON value, but the ``url`` of a RelatedArtifact (``links``: a web link to read, such as
    a card's link to the pathway it belongs to, where ``resource`` would be the canonical the artifact uses)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if not (links and key == "url"):
                yield from _strings(item, key in RELATED_ARTIFACT_ELEMENTS)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, links)


def _named(content: Content, resource: Json) -> list[Json]:
    """The artifacts of the content that one resource names directly (not itself)."""
    found: dict[tuple[str, str], Json] = {}
    for text in _strings(resource):
        targets = [content.resolve(text)]
        targets += [t for t in map(content.resolve, URL_IN_TEXT.findall(text)) if t and t["resourceType"] in TERMINOLOGY]
        for target in targets:
            if target is not None and target is not resource:
                found[(target["resourceType"], target["id"])] = target
    return list(found.values())


def dependencies(content: Content, artifact: Json) -> list[Json]:
    """Every artifact of the content that ``artifact`` depends on, directly or through another, each once, in the
    content's order (what is referred to comes first); the artifact itself is not among them."""
    seen: set[tuple[str, str]] = {(artifact["resourceType"], artifact["id"])}
    pending = [artifact]
    while pending:
        for target in _named(content, pending.pop()):
            key = (target["resourceType"], target["id"])
            if key not in seen:
                seen.add(key)
                pending.append(target)
    seen.discard((artifact["resourceType"], artifact["id"]))
    return [r for r in content.resources if (r["resourceType"], r.get("id")) in seen]


def _action_inputs(actions: list[Json]) -> Iterator[Json]:
    """The ``input`` data requirements of actions and their sub-actions."""
    for action in actions:
        yield from action.get("input") or []
        yield from _action_inputs(action.get("action") or [])


def data_requirements(content: Content, artifact: Json) -> list[Json]:
    """Every data requirement the artifact reads, each once: those of the Libraries it depends on (or its own, for a
    Library) and, for a PlanDefinition, those of its actions' inputs. Only requirements with an ``id`` count, since
    those are the ones the engine answers (``%id``)."""
    libraries = [artifact] if artifact["resourceType"] == "Library" else []
    libraries += [r for r in dependencies(content, artifact) if r["resourceType"] == "Library"]
    found: list[Json] = []
    for library in libraries:
        found.extend(library.get("dataRequirement") or [])
    if artifact["resourceType"] == "PlanDefinition":
        found.extend(_action_inputs(artifact.get("action") or []))
    unique: list[Json] = []
    for requirement in found:
        if requirement.get("id") and requirement not in unique:
            unique.append(requirement)
    return unique


def _versioned(resource: Json) -> str:
    """``url|version`` of an artifact (``url`` alone when it has no version)."""
    return f"{resource['url']}|{resource['version']}" if resource.get("version") else resource["url"]


def _code_systems(content: Content, artifacts: list[Json]) -> list[str]:
    """The code systems that the ValueSets among ``artifacts`` draw on and the content does not hold (SNOMED CT,
    RxNorm...), each once, with its version where the ValueSet names one."""
    found: list[str] = []
    for valueset in (r for r in artifacts if r["resourceType"] == "ValueSet"):
        for include in (valueset.get("compose") or {}).get("include") or []:
            system = include.get("system")
            if not system or content.resolve(system) is not None:
                continue
            canonical = f"{system}|{include['version']}" if include.get("version") else system
            if canonical not in found:
                found.append(canonical)
    return found


def related_artifacts(content: Content, artifact: Json) -> list[Json]:
    """``depends-on`` RelatedArtifacts: every artifact it depends on (``url|version``), then the external code systems."""
    dependencies_ = dependencies(content, artifact)
    related = [{"type": "depends-on", "display": f"{r['resourceType']} {r.get('title') or r.get('name') or r['id']}",
                "resource": _versioned(r)} for r in dependencies_ if r.get("url")]
    related += [{"type": "depends-on", "display": "Code system", "resource": system}
                for system in _code_systems(content, dependencies_)]
    return related


def _parameters(content: Content, artifact: Json) -> list[Json]:
    """The input parameters of the Libraries the artifact uses (for example the ordering hooks' draft orders)."""
    libraries = [artifact] if artifact["resourceType"] == "Library" else []
    libraries += [r for r in dependencies(content, artifact) if r["resourceType"] == "Library"]
    found: list[Json] = []
    for library in libraries:
        for parameter in library.get("parameter") or []:
            if parameter not in found:
                found.append(parameter)
    return found


def module_definition(content: Content, artifact: Json) -> Json:
    """The answer of ``$data-requirements`` on a PlanDefinition or Library: a ``module-definition`` Library holding
    the data requirements (code filters by ValueSet canonical, date filters), the parameters and the ``depends-on``
    related artifacts of the artifact."""
    pub = content.publication_of(artifact)
    library: Json = {
        "resourceType": "Library",
        "id": f"{artifact['id']}-data-requirements",
        "status": pub["status"],
        "name": f"{artifact.get('name') or artifact['id']}DataRequirements",
        "title": f"Data requirements of {artifact.get('title') or artifact['id']}",
        "type": {"coding": [{"system": LIBRARY_TYPE, "code": "module-definition", "display": "Module Definition"}]},
        "relatedArtifact": related_artifacts(content, artifact),
        "dataRequirement": data_requirements(content, artifact),
    }
    parameters = _parameters(content, artifact)
    if parameters:
        library["parameter"] = parameters
    if not library["relatedArtifact"]:
        del library["relatedArtifact"]
    return library


def package_bundle(content: Content, artifact: Json) -> Json:
    """The answer of ``$package``: a collection Bundle of the artifact and every artifact it depends on, each once
    (ValueSets with their expansions, as shipped), the artifact first."""
    members = [artifact, *dependencies(content, artifact)]
    return {
        "resourceType": "Bundle",
        "id": f"{artifact['id']}-package",
        "type": "collection",
        "entry": [{"fullUrl": r.get("url") or content.canonical(r["resourceType"], r["id"]), "resource": copy.deepcopy(r)}
                  for r in members],
    }
