#!/usr/bin/env python3
"""Build the protocol's FHIR R4 ValueSets from the shared terminology files and the protocol's ValueSet source.

Reads the terminology lists (``clinical.json``, ``clinical-red-flags.json`` and the ``rxnorm-*.json`` files), the
protocol's ``valuesets.source.json`` (which codes each ValueSet holds, and its title, summary, purpose and
judgement calls) and the publication metadata (``publication.json``), all in ``protocol/content/back-spasm/`` by
default, and writes one ``ValueSet-<id>.json`` per ValueSet of the source into that folder. The output is
deterministic: running the script twice gives byte-identical files.

    python scripts/make_valuesets.py                 # write the files
    python scripts/make_valuesets.py --check         # exit 1 and list the files that differ
    python scripts/make_valuesets.py --terminology DIR --source FILE --publication FILE --out DIR

Only codes listed under ``codes`` in the terminology files are shipped; a code listed under ``unverified``
anywhere is refused, except where the source's ``allowedDespiteUnverified`` names it. From
``clinical-red-flags.json`` a code that the file also lists under ``notes.left_out`` is never shipped, every row
marked 'Optional' must have a decision in the source's ``redFlags.optionalRows``, and the codes not shipped must be
those its ``redFlags.notShipped`` lists (so that a change of the terminology file stops the build until the notes
have been reread). Every group and RxNorm file of the terminology must be the source of some ValueSet. Standard
library only.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TERMINOLOGY = PROJECT_ROOT.parent / "shared" / "clinical" / "terminology"
DEFAULT_OUT = PROJECT_ROOT / "protocol" / "content" / "back-spasm"
DEFAULT_PUBLICATION = DEFAULT_OUT / "publication.json"
DEFAULT_SOURCE = DEFAULT_OUT / "valuesets.source.json"

SHAREABLE_VALUESET = "http://hl7.org/fhir/StructureDefinition/shareablevalueset"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"

# Characters that the R4 string pattern ^[ \r\n\t\S]+$ rejects (JavaScript \s) or that are
# invisible: they are replaced by a plain space or removed.
_UNICODE_SPACES = set("\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\u0085\x0b\x0c") | {
    chr(c) for c in range(0x2000, 0x200B)
}
_INVISIBLE = set("\u200b\u200c\u200d\u2060\ufeff")


def fhir_text(value: str) -> str:
    """Replace Unicode spaces by a plain space and drop zero-width characters (keeps newlines)."""
    return "".join(
        " " if ch in _UNICODE_SPACES else "" if ch in _INVISIBLE else ch for ch in value
    )


def clean_display(value: str) -> str:
    """A display as shipped: Unicode spaces normalised, whitespace runs collapsed, trimmed."""
    return " ".join(fhir_text(value).split())


def _clean_strings(obj):
    if isinstance(obj, str):
        return fhir_text(obj)
    if isinstance(obj, list):
        return [_clean_strings(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _clean_strings(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# The source: what each ValueSet holds and says


def load_source(path: Path) -> dict:
    """Read the ValueSet source file: every ValueSet has an id, its texts, and a select or a union."""
    source = json.loads(Path(path).read_text(encoding="utf-8"))
    seen = set()
    for vs in source["valueSets"]:
        missing = [k for k in ("id", "title", "summary", "purpose", "notes") if k not in vs]
        if missing or ("select" in vs) == ("union" in vs):
            raise ValueError(f"{path}: ValueSet {vs.get('id')!r} needs id, title, summary, purpose, notes and "
                             f"either select or union (missing: {missing})")
        if vs["id"] in seen:
            raise ValueError(f"{path}: ValueSet {vs['id']!r} listed twice")
        seen.add(vs["id"])
    return source


def _allowed_unverified(source: dict) -> dict[tuple[str, str], set[str]]:
    return {(a["system"], a["code"]): set(a["valueSets"]) for a in source.get("allowedDespiteUnverified", [])}


# --------------------------------------------------------------------------------------------
# Where the codes come from: each code's ``source`` (clinical.json) or each file's ``source``
# (rxnorm-*.json) is matched against the markers of the source file; every code must match one.


def _clinical_sources(source: dict, code: dict) -> list[str]:
    found = [r["label"] for r in source["sources"]["clinical"] if r["marker"] in code["source"]]
    if not found:
        raise ValueError(f"unknown source for {code['system']}|{code['code']}: {code['source']!r}")
    return found


def _rx_sources(source: dict, file: dict, code: dict) -> list[str]:
    if "verified" in code:
        return [source["sources"]["rxnormVerified"]]
    for rule in source["sources"]["rxnorm"]:
        if rule["marker"] in file["source"]:
            return [rule["label"]]
    raise ValueError(f"unknown source in {file['id']}: {file['source']!r}")


# clinical-red-flags.json: the same markers, except that each VSAC value set is named, so that the
# descriptions of its ValueSets say which value set a code was seen in.
_VSAC_VALUE_SET = re.compile(r'\[VSAC\] canvas-plugins (v\d{4})/[\w.]+ value set "([^"]+)"')


def _red_flag_sources(source: dict, code: dict) -> list[str]:
    src = code["source"]
    if src.lstrip().upper().startswith("UNVERIFIED"):
        raise ValueError(f"{code['system']}|{code['code']} is listed under codes but its source "
                         f"says unverified: {src!r}")
    labels = [r["label"] for r in source["sources"]["clinical"] if r["marker"] != "[VSAC]" and r["marker"] in src]
    vsac = _VSAC_VALUE_SET.findall(src)
    if src.count("[VSAC]") != len(vsac):
        raise ValueError(f"unreadable VSAC source for {code['system']}|{code['code']}: {src!r}")
    for version, name in vsac:
        label = f'the VSAC eCQM value set "{name}" ({version})'
        if label not in labels:
            labels.append(label)
    if not labels:
        raise ValueError(f"unknown source for {code['system']}|{code['code']}: {src!r}")
    return labels


# --------------------------------------------------------------------------------------------
# Red flags and anticholinergic cautions (clinical-red-flags.json)

_ICD_CODE = re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")
_SEQUELA_ENTRY = re.compile(r"\(7th character ([A-Z])\) .* under (.+)")


def _icd_7th(code: str) -> str | None:
    """The 7th character of an ICD-10-CM code (S22.000A -> 'A'), None for shorter codes."""
    plain = code.replace(".", "")
    return plain[6] if len(plain) == 7 else None


#: The decisions an Optional row of clinical-red-flags.json can take in the source's ``redFlags.optionalRows``:
#: ship every code of the row, or every code but the malunion encounters (7th character P).
OPTIONAL_DECISIONS = {
    "all": lambda c: True,
    "all-but-malunion": lambda c: not (c["system"] == ICD10CM and _icd_7th(c["code"]) == "P"),
}


def _left_out_test(entry: dict):
    """A test (system, code) -> bool for one entry of notes.left_out.

    SNOMED CT codes match exactly; an ICD-10-CM entry matches its code and every code below it
    (S12 covers S12.000A); the entry for sequela codes ('(7th character S) ... under M48.5, S22.0')
    matches the codes of those categories (named in its display) with that 7th character.
    """
    system, code = entry["system"], entry["code"]
    if system == ICD10CM and _ICD_CODE.fullmatch(code):
        return lambda s, c: s == ICD10CM and c.startswith(code)
    if system == ICD10CM and (m := _SEQUELA_ENTRY.fullmatch(f"{code} {entry['display']}")):
        char, categories = m.group(1), [x.strip() for x in m.group(2).split(",")]
        return lambda s, c: (s == ICD10CM and _icd_7th(c) == char
                             and any(c.startswith(cat) for cat in categories))
    if system != ICD10CM and code.isdigit():
        return lambda s, c: s == system and c == code
    raise ValueError(f"cannot read the left_out entry {system}|{code!r} of the red-flags file")


def _is_left_out(concept: dict, tests: list) -> bool:
    return any(test(concept["system"], concept["code"]) for test in tests)


def _red_flag_plan(source: dict, gid: str, group: dict) -> dict:
    """Shipped and not-shipped rows of one group of clinical-red-flags.json."""
    red_flags = source["redFlags"]
    tests = group["_left_out"]
    shipped, dropped = [], []
    for c in group["codes"]:
        keep = not _is_left_out(c, tests)
        if keep and c.get("subgroup", "").startswith("Optional"):
            decisions = [OPTIONAL_DECISIONS[row["ship"]] for row in red_flags["optionalRows"]
                         if c["subgroup"].startswith(row["subgroupStartsWith"])]
            if len(decisions) != 1:
                raise ValueError(f"{gid}: no decision for the Optional subgroup {c['subgroup']!r} "
                                 f"(add it to redFlags.optionalRows of the source)")
            keep = decisions[0](c)
        (shipped if keep else dropped).append(c)
    not_shipped = {(c["system"], c["code"]) for c in dropped}
    expected = {(c["system"], c["code"]) for c in red_flags["notShipped"].get(gid, [])}
    if not_shipped != expected:
        raise ValueError(f"{gid}: the codes not shipped changed: {sorted(not_shipped)} instead of "
                         f"{sorted(expected)}; reread the notes and update redFlags.notShipped of the source")
    return shipped


def _check_not_left_out(vs_id: str, concepts: list[dict], term: dict) -> None:
    group = term["groups"].get(vs_id, {})
    for c in concepts:
        if _is_left_out(c, group.get("_left_out", [])):
            raise ValueError(f"{vs_id}: {(c['system'], c['code'])} is listed under notes.left_out "
                             f"in {term['red_flags_file']}")


def _contents_markdown(source: dict, vs_id: str, plan: dict, term: dict) -> str:
    """What the set holds, by subgroup of the terminology file, with what was not shipped."""
    names = source["systemNames"]
    shipped = {(c["system"], c["code"]) for c in plan[vs_id]["concepts"]}
    rows: dict[str, list[dict]] = {}
    for c in term["groups"][vs_id]["codes"]:
        rows.setdefault(c["subgroup"], []).append(c)
    head = "What the set holds, by subgroup of the terminology file"
    if any(sub.startswith("Optional") for sub in rows):
        head += (" (subgroups that start with 'Optional' are the broader rows; see the judgement "
                 "calls)")
    lines = [head + ":", ""]
    for subgroup, codes in rows.items():
        counts = []
        for system in dict.fromkeys(c["system"] for c in codes):
            n = sum(1 for c in codes if c["system"] == system
                    and (c["system"], c["code"]) in shipped)
            counts.append(f"{names[system]} {n}")
        line = f"- {subgroup}: {', '.join(counts)}"
        left = [c for c in codes if (c["system"], c["code"]) not in shipped]
        if left:
            line += " (not shipped: " + ", ".join(
                f"{names[c['system']]} {c['code']}" for c in left) + ")"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Loading


def _group_codes(group: dict, sources, unverified: set) -> list[dict]:
    """A group's codes with a cleaned display and their source labels; its unverified codes go into ``unverified``."""
    codes = []
    for raw in group["codes"]:
        c = dict(raw)
        c["display"] = clean_display(raw["display"])
        c["_sources"] = sources(raw)
        codes.append(c)
    for raw in group.get("unverified", []):
        unverified.add((raw["system"], raw["code"]))
    return codes


def load_terminology(terminology_dir: Path, source: dict) -> dict:
    """Read the terminology files: {'groups': {id: group}, 'rx': {id: file}, 'unverified': set}.

    Each code gets ``system``, ``code`` and a cleaned ``display`` plus ``_sources`` (labels). The
    groups of clinical-red-flags.json also get ``_left_out``: one test per notes.left_out entry.
    """
    terminology_dir = Path(terminology_dir)
    red_flags_file = source["redFlags"]["file"]
    clinical = json.loads((terminology_dir / "clinical.json").read_text(encoding="utf-8"))
    unverified: set[tuple[str, str]] = set()
    groups = {}
    for gid, group in clinical["groups"].items():
        groups[gid] = dict(group, codes=_group_codes(group, lambda code: _clinical_sources(source, code), unverified))
    red_flags = json.loads((terminology_dir / red_flags_file).read_text(encoding="utf-8"))
    left_out = red_flags.get("notes", {}).get("left_out", [])
    for gid, group in red_flags["groups"].items():
        if gid in groups or gid not in source["redFlags"]["groups"]:
            raise ValueError(f"unexpected group {gid!r} in {red_flags_file}")
        tests = [_left_out_test(e) for e in left_out if e["group"] == gid]
        groups[gid] = dict(group, codes=_group_codes(group, lambda code: _red_flag_sources(source, code), unverified),
                           _left_out=tests, _red_flags=True)
    rx = {}
    for path in sorted(terminology_dir.glob("rxnorm-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        codes = []
        for raw in data["codes"]:
            c = dict(raw)
            c["system"] = raw.get("system", data["system"])
            c["display"] = clean_display(raw["display"])
            c["_sources"] = _rx_sources(source, data, raw)
            codes.append(c)
        for raw in data.get("unverified", []):
            unverified.add((raw.get("system", data["system"]), raw["code"]))
        rx[data["id"]] = dict(data, codes=codes)
    return {"groups": groups, "rx": rx, "unverified": unverified, "red_flags_file": red_flags_file}


def _dedupe(concepts: list[dict]) -> list[dict]:
    seen = set()
    out = []
    for c in concepts:
        key = (c["system"], c["code"])
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _by_system(concepts: list[dict]) -> list[dict]:
    """Stable grouping by code system (systems in order of first appearance), so that the
    expansion lists the codes in the order of compose.include."""
    blocks: dict[str, list[dict]] = {}
    for c in concepts:
        blocks.setdefault(c["system"], []).append(c)
    return [c for block in blocks.values() for c in block]


def _pick(concepts: list[dict], system: str, codes: list[str], where: str) -> list[dict]:
    by_key = {(c["system"], c["code"]): c for c in concepts}
    missing = [code for code in codes if (system, code) not in by_key]
    if missing:
        raise ValueError(f"codes {missing} of {system} not among the verified codes of {where}")
    return [by_key[(system, code)] for code in codes]


def valueset_name(vs_id: str) -> str:
    """PascalCase computable name; consecutive numbers are kept apart by '_' (7-5 -> 7_5)."""
    out = ""
    for part in vs_id.split("-"):
        if part[:1].isdigit() and out[-1:].isdigit():
            out += "_"
        out += part[:1].upper() + part[1:]
    return out


# --------------------------------------------------------------------------------------------
# Building


def _select(source: dict, rule: dict, term: dict, vs_id: str) -> list[dict]:
    """The codes one ``select`` rule of the source takes: a group or RxNorm file, narrowed by its filters."""
    if "group" in rule:
        if rule["group"] not in term["groups"]:
            raise ValueError(f"{vs_id}: no group {rule['group']!r} in the terminology files")
        group = term["groups"][rule["group"]]
        where = f"group {rule['group']}"
        concepts = _red_flag_plan(source, rule["group"], group) if group.get("_red_flags") else group["codes"]
    else:
        if rule["rxnorm"] not in term["rx"]:
            raise ValueError(f"{vs_id}: no rxnorm file with id {rule['rxnorm']!r}")
        concepts, where = term["rx"][rule["rxnorm"]]["codes"], f"rxnorm file {rule['rxnorm']}"
    excluded = {(c["system"], c["code"]) for c in rule.get("exclude", [])}
    concepts = [c for c in concepts if (c["system"], c["code"]) not in excluded]
    if "subgroupStartsWith" in rule:
        concepts = [c for c in concepts if c.get("subgroup", "").startswith(rule["subgroupStartsWith"])]
    if "subgroupContains" in rule:
        concepts = [c for c in concepts if rule["subgroupContains"] in c.get("subgroup", "")]
    if "release" in rule:
        concepts = [c for c in concepts if c.get("release") == rule["release"]]
    if "strengthMg" in rule:
        concepts = [c for c in concepts if c.get("strength_mg") is not None and float(c["strength_mg"]) == float(rule["strengthMg"])]
    if "system" in rule:
        concepts = [c for c in concepts if c["system"] == rule["system"]]
    if "codes" in rule:
        concepts = _pick(concepts, rule["system"], rule["codes"], where)
    return concepts


def _plan(source: dict, term: dict) -> dict[str, dict]:
    """What each ValueSet holds: {'concepts': [...], 'parent': id?} or {'union': [ids]}, from the source's rules."""
    plan: dict[str, dict] = {}
    used: set[tuple[str, str]] = set()
    for vs in source["valueSets"]:
        if "union" in vs:
            plan[vs["id"]] = {"union": vs["union"]}
            continue
        rules = vs["select"] if isinstance(vs["select"], list) else [vs["select"]]
        concepts = [c for rule in rules for c in _select(source, rule, term, vs["id"])]
        used |= {("group", r["group"]) if "group" in r else ("rx", r["rxnorm"]) for r in rules}
        item = {"concepts": _by_system(_dedupe(concepts))}
        if "subsetOf" in vs:
            item["parent"] = vs["subsetOf"]
        if not item["concepts"]:
            raise ValueError(f"ValueSet {vs['id']} would be empty")
        plan[vs["id"]] = item
    unused = sorted(({("group", g) for g in term["groups"]} | {("rx", r) for r in term["rx"]}) - used)
    if unused:
        raise ValueError(f"terminology files and ValueSet source disagree: no ValueSet reads {unused}")
    return plan


def _check_verified(source: dict, vs_id: str, concepts: list[dict], unverified: set) -> None:
    allowed = _allowed_unverified(source)
    for c in concepts:
        key = (c["system"], c["code"])
        if key in unverified and vs_id not in allowed.get(key, set()):
            raise ValueError(f"{vs_id}: {key} is listed as unverified in the terminology files")


def _sources_markdown(source: dict, vs: dict, plan: dict, concepts: list[dict], term: dict) -> str:
    vs_id = vs["id"]
    item = plan[vs_id]
    if "union" in item:
        parts = ", ".join(f"`{p}`" for p in item["union"])
        return (f"The codes are the union of the value sets {parts}, included by canonical "
                "URL; see their descriptions for where each code comes from.")
    by_system: dict[str, list[str]] = {}
    for c in concepts:
        labels = by_system.setdefault(c["system"], [])
        for label in c["_sources"]:
            if label not in labels:
                labels.append(label)
    lines = []
    if "parent" in item:
        lines.append(f"A subset of `{item['parent']}`, taken from its verified codes: "
                     f"{vs['subsetWhy']}")
        lines.append("")
    if "sourcesLead" in vs:  # the codes name the value sets they were expanded from
        canonicals = []
        for c in concepts:
            if c["from_valueset"] not in canonicals:
                canonicals.append(c["from_valueset"])
        lines.append(vs["sourcesLead"])
        lines.append("")
        lines.extend(f"- `{url}`" for url in canonicals)
        return "\n".join(lines)
    lines.append("Where the codes come from:")
    lines.append("")
    for system, labels in by_system.items():
        lines.append(f"- {source['systemNames'].get(system, system)}: {'; '.join(labels)}")
    if term["groups"].get(vs_id, {}).get("_red_flags") and any(label.startswith("the VSAC") for labels in
                                                                 by_system.values() for label in labels):
        lines.append("")
        lines.append(source["sources"]["vsacCanvasNote"])
    return "\n".join(lines)


def _narrative(title: str, paragraph: str, contains: list[dict], names: dict[str, str]) -> dict:
    esc = lambda s: html.escape(s, quote=False)  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(names.get(c['system'], c['system']))}</td>"
        f"<td>{esc(c['code'])}</td><td>{esc(c['display'])}</td></tr>"
        for c in contains[:100]
    )
    more = ""
    if len(contains) > 100:
        more = (f"<p>The table shows the first 100 of {len(contains)} codes; the other "
                f"{len(contains) - 100} are in the expansion.</p>")
    div = (
        '<div xmlns="http://www.w3.org/1999/xhtml">'
        f"<h2>{esc(title)}</h2><p>{esc(paragraph)}</p>"
        "<table><thead><tr><th>System</th><th>Code</th><th>Display</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{more}</div>"
    )
    return {"status": "generated", "div": div}


def _timestamp(date: str) -> str:
    return f"{date}T00:00:00Z" if len(date) == 10 else date


def build_valuesets(terminology_dir: Path, publication: dict, source: dict | None = None) -> dict[str, dict]:
    """Build every ValueSet of the source (default: the protocol's valuesets.source.json): {id: resource}, in its order."""
    source = source if source is not None else load_source(DEFAULT_SOURCE)
    term = load_terminology(Path(terminology_dir), source)
    plan = _plan(source, term)
    order = [vs["id"] for vs in source["valueSets"]]
    by_id = {vs["id"]: vs for vs in source["valueSets"]}
    canonical = publication["canonical"].rstrip("/")
    version = publication["version"]
    url_of = lambda vs_id: f"{canonical}/ValueSet/{vs_id}"  # noqa: E731

    expansions: dict[str, list[dict]] = {}
    for vs_id in order:  # parts of a union come before the union
        item = plan[vs_id]
        if "union" in item:
            late = [p for p in item["union"] if p not in expansions]
            if late:
                raise ValueError(f"{vs_id}: the union names {late}, which must come before it in the source")
            expansions[vs_id] = _dedupe([c for p in item["union"] for c in expansions[p]])
        else:
            expansions[vs_id] = item["concepts"]
        _check_verified(source, vs_id, expansions[vs_id], term["unverified"])
        _check_not_left_out(vs_id, expansions[vs_id], term)

    result: dict[str, dict] = {}
    for vs_id in order:
        item, texts = plan[vs_id], by_id[vs_id]
        concepts = expansions[vs_id]
        url = url_of(vs_id)
        if "union" in item:
            include = [{"valueSet": [url_of(p)]} for p in item["union"]]
        else:
            per_system: dict[str, list[dict]] = {}
            for c in concepts:
                per_system.setdefault(c["system"], []).append(
                    {"code": c["code"], "display": c["display"]})
            include = [{"system": s, "concept": cs} for s, cs in per_system.items()]
        contains = [{"system": c["system"], "code": c["code"], "display": c["display"]}
                    for c in concepts]
        description = "\n\n".join([
            texts["summary"],
            *([_contents_markdown(source, vs_id, plan, term)] if term["groups"].get(vs_id, {}).get("_red_flags") else []),
            _sources_markdown(source, texts, plan, concepts, term),
            "Judgement calls:\n\n" + "\n".join(f"- {n}" for n in texts["notes"]),
        ])
        paragraph = f"{texts['summary']} It holds {len(contains)} codes."
        if "union" in item:
            paragraph += " It combines the value sets " + ", ".join(item["union"]) + "."
        systems = []
        for c in contains:
            if c["system"] not in systems:
                systems.append(c["system"])
        copyright_notes = [source["copyrightNotes"][s] for s in systems if s in source["copyrightNotes"]]
        vs = {
            "resourceType": "ValueSet",
            "id": vs_id,
            "meta": {"profile": [SHAREABLE_VALUESET]},
            "text": _narrative(texts["title"], paragraph, contains, source["systemNames"]),
            "url": url,
            "version": version,
            "name": valueset_name(vs_id),
            "title": texts["title"],
            "status": publication["status"],
            "experimental": publication["experimental"],
            "date": publication["date"],
            "publisher": publication["publisher"],
            "contact": publication["contact"],
            "description": description,
            "jurisdiction": publication["jurisdiction"],
            "purpose": texts["purpose"],
        }
        if copyright_notes:
            vs["copyright"] = " ".join(copyright_notes)
        vs["compose"] = {"include": include}
        vs["expansion"] = {
            "identifier": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{url}|{version}')}",
            "timestamp": _timestamp(publication["date"]),
            "total": len(contains),
            "contains": contains,
        }
        result[vs_id] = _clean_strings(vs)
    return result


def render(resource: dict) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def file_name(vs_id: str) -> str:
    return f"ValueSet-{vs_id}.json"


def drift(valuesets: dict[str, dict], out_dir: Path) -> list[str]:
    """Lines naming the files in out_dir that differ from what would be generated."""
    problems = []
    for vs_id, vs in valuesets.items():
        path = out_dir / file_name(vs_id)
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != render(vs):
            problems.append(f"differs: {path}")
    expected = {file_name(i) for i in valuesets}
    for path in sorted(out_dir.glob("ValueSet-*.json")):
        if path.name not in expected and not is_local(json.loads(path.read_text(encoding="utf-8"))):
            problems.append(f"not generated: {path}")
    return problems


def is_local(valueset: dict) -> bool:
    """True for a hand-written ValueSet of the protocol's own CodeSystems (not built from the terminology files)."""
    base = valueset.get("url", "").split("/ValueSet/")[0]
    systems = [inc.get("system", "") for inc in valueset.get("compose", {}).get("include", [])]
    return bool(systems) and all(s.startswith(base + "/CodeSystem/") for s in systems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminology", type=Path, default=DEFAULT_TERMINOLOGY,
                        help="folder of clinical.json, clinical-red-flags.json and rxnorm-*.json "
                        "(default: %(default)s)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="what each ValueSet holds and its texts (default: %(default)s)")
    parser.add_argument("--publication", type=Path, default=DEFAULT_PUBLICATION,
                        help="publication metadata (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder of the ValueSet files (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing the files that differ")
    args = parser.parse_args(argv)

    if not (args.terminology / "clinical.json").is_file():
        parser.error(f"--terminology {args.terminology}: no clinical.json there (the shared terminology folder, or "
                     "tests/data/terminology in a clone without ../shared)")
    publication = json.loads(args.publication.read_text(encoding="utf-8"))
    valuesets = build_valuesets(args.terminology, publication, load_source(args.source))
    if args.check:
        problems = drift(valuesets, args.out)
        for line in problems:
            print(line)
        if problems:
            print(f"{len(problems)} ValueSet file(s) out of date: run scripts/make_valuesets.py")
            return 1
        print(f"{len(valuesets)} ValueSet files up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for vs_id, vs in valuesets.items():
        (args.out / file_name(vs_id)).write_text(render(vs), encoding="utf-8", newline="\n")
    for line in drift(valuesets, args.out):
        print(f"warning: {line}")
    print(f"wrote {len(valuesets)} ValueSet files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
