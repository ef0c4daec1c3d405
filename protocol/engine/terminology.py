"""ValueSet membership answered from the shipped expansions, so no terminology server is needed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Code = tuple[str, str]

#: Code systems whose URI clinical systems write in several ways; each is compared in its canonical form.
CANONICAL_SYSTEMS = (
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://snomed.info/sct",
    "http://loinc.org",
    "http://hl7.org/fhir/sid/icd-10-cm",
)


def _system_aliases(canonicals: Iterable[str]) -> dict[str, str]:
    """Every spelling of each system (``http`` or ``https``, with or without a trailing slash) -> its canonical URI."""
    aliases: dict[str, str] = {}
    for canonical in canonicals:
        rest = canonical.split("://", 1)[1]
        for scheme in ("http://", "https://"):
            for tail in ("", "/"):
                aliases[scheme + rest + tail] = canonical
    return aliases


#: Precomputed once, so that reading a coding's system costs one dict lookup.
SYSTEM_ALIASES: dict[str, str] = _system_aliases(CANONICAL_SYSTEMS)


def canonical_system(system: str) -> str:
    """The canonical URI of a code system as records write it (``https://snomed.info/sct/`` -> ``http://snomed.info/sct``)."""
    return SYSTEM_ALIASES.get(system, system)


def split_canonical(canonical: str) -> tuple[str, str | None]:
    """Split ``url|version`` into its parts."""
    url, _, version = canonical.partition("|")
    return url, version or None


def codings_of(value: Any) -> list[Mapping[str, Any]]:
    """The codings of a Coding or CodeableConcept dict (anything else has none)."""
    if not isinstance(value, Mapping):
        return []
    if "coding" in value:
        codings = value.get("coding")
        return [c for c in codings if isinstance(c, Mapping)] if isinstance(codings, list) else []
    if "code" in value and "system" in value:
        return [value]
    return []


def codes_of(value: Any) -> set[Code]:
    """(system, code) pairs of a Coding or CodeableConcept, for set lookups; systems in their canonical form."""
    aliases = SYSTEM_ALIASES
    return {(aliases.get(c["system"], c["system"]), c["code"]) for c in codings_of(value)
            if isinstance(c.get("system"), str) and isinstance(c.get("code"), str)}


def index_codes(codes: Iterable[Code]) -> dict[str, frozenset[str]]:
    """(system, code) pairs as code -> the systems it is listed under (canonical forms)."""
    index: dict[str, set[str]] = {}
    for system, code in codes:
        index.setdefault(code, set()).add(SYSTEM_ALIASES.get(system, system))
    return {code: frozenset(systems) for code, systems in index.items()}


def concept_in(value: Any, index: Mapping[str, frozenset[str]]) -> bool:
    """True when a Coding or CodeableConcept dict has a coding whose code and system are in the index
    (an index from ``index_codes``; the coding's system is read in its canonical form)."""
    codings = value.get("coding")
    if codings is None:
        codings = (value,)
    elif type(codings) is not list:
        return False
    for coding in codings:
        if type(coding) is dict:
            code = coding.get("code")
            if type(code) is str:
                systems = index.get(code)
                system = coding.get("system")
                if systems is not None and type(system) is str and SYSTEM_ALIASES.get(system, system) in systems:
                    return True
    return False


class Terminology:
    """The codes of each ValueSet of the content, by canonical url (with or without ``|version``)."""

    def __init__(self, valuesets: Iterable[Mapping[str, Any]]):
        resources = {vs["url"]: vs for vs in valuesets if vs.get("url")}
        self._versions = {url: vs.get("version") for url, vs in resources.items()}
        self._codes: dict[str, frozenset[Code]] = {}
        self._by_code: dict[str, dict[str, frozenset[str]]] = {}
        for url in resources:
            self._codes[url] = frozenset((SYSTEM_ALIASES.get(system, system), code) for system, code in self._expand(url, resources, ()))
            self._by_code[url] = index_codes(self._codes[url])

    @staticmethod
    def _expand(url: str, resources: Mapping[str, Mapping[str, Any]], seen: tuple[str, ...]) -> set[Code]:
        """Codes of one ValueSet: its expansion if shipped, else its compose (explicit concepts and included ValueSets)."""
        vs = resources[url]
        expansion = vs.get("expansion")
        if expansion is not None:
            found: set[Code] = set()
            stack = list(expansion.get("contains") or [])
            while stack:
                item = stack.pop()
                if item.get("system") and item.get("code"):
                    found.add((item["system"], item["code"]))
                stack.extend(item.get("contains") or [])
            return found
        found = set()
        for include in (vs.get("compose") or {}).get("include") or []:
            codes = {(include["system"], c["code"]) for c in include.get("concept") or []} if include.get("system") else None
            for ref in include.get("valueSet") or []:
                ref_url = split_canonical(ref)[0]
                if ref_url in resources and ref_url not in seen:
                    included = Terminology._expand(ref_url, resources, seen + (url,))
                    codes = included if codes is None else codes & included
            found |= codes or set()
        return found

    def __contains__(self, canonical: str) -> bool:
        url, version = split_canonical(canonical)
        return url in self._codes and (version is None or self._versions.get(url) == version)

    def codes(self, canonical: str) -> frozenset[Code]:
        """Every (system, code) of the ValueSet, systems in their canonical form; KeyError when it is not loaded."""
        url, _ = split_canonical(canonical)
        return self._codes[url]

    def code_index(self, canonical: str) -> dict[str, frozenset[str]]:
        """The ValueSet's codes as code -> systems, so a coding is tested without building a pair; KeyError when not loaded."""
        url, _ = split_canonical(canonical)
        return self._by_code[url]

    def member_of(self, value: Any, canonical: str) -> bool:
        """True when a coding of the Coding/CodeableConcept is in the ValueSet (matched on system and code only,
        the system in its canonical form, so ``https://snomed.info/sct/`` matches ``http://snomed.info/sct``)."""
        codes = self._codes.get(split_canonical(canonical)[0])
        if not codes:
            return False
        aliases = SYSTEM_ALIASES
        for coding in codings_of(value):
            system, code = coding.get("system"), coding.get("code")
            if type(system) is str and type(code) is str and (aliases.get(system, system), code) in codes:
                return True
        return False

    def all_codes(self) -> frozenset[Code]:
        """Every code of every loaded ValueSet."""
        return frozenset().union(*self._codes.values()) if self._codes else frozenset()
