#!/usr/bin/env python3
"""Build the protocol's FHIR R4 ValueSets from the shared terminology files.

Reads the terminology lists (``clinical.json``, ``clinical-red-flags.json`` and the
``rxnorm-*.json`` files) and the publication metadata in ``protocol/content/back-spasm/publication.json``, and
writes one ``protocol/content/back-spasm/ValueSet-<id>.json`` per ValueSet. The output is deterministic:
running the script twice gives byte-identical files.

    python scripts/make_valuesets.py                 # write the files
    python scripts/make_valuesets.py --check         # exit 1 and list the files that differ
    python scripts/make_valuesets.py --terminology DIR --publication FILE --out DIR

Only codes listed under ``codes`` in the terminology files are shipped; a code listed under
``unverified`` anywhere is refused, with one documented exception (the RxNorm ingredient
21949, see ``ALLOWED_DESPITE_UNVERIFIED``). From ``clinical-red-flags.json`` a code that the file
also lists under ``notes.left_out`` is never shipped, and every row marked 'Optional' must have a
decision in ``OPTIONAL_RED_FLAG_ROWS``. Standard library only.
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
DEFAULT_PUBLICATION = PROJECT_ROOT / "protocol" / "content" / "back-spasm" / "publication.json"
DEFAULT_OUT = PROJECT_ROOT / "protocol" / "content" / "back-spasm"

SHAREABLE_VALUESET = "http://hl7.org/fhir/StructureDefinition/shareablevalueset"

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

SYSTEM_NAMES = {
    SNOMED: "SNOMED CT",
    ICD10CM: "ICD-10-CM",
    LOINC: "LOINC",
    CPT: "CPT",
    HCPCS: "HCPCS Level II",
    RXNORM: "RxNorm",
    "http://terminology.hl7.org/CodeSystem/condition-clinical": "Condition clinical status (HL7)",
    "http://terminology.hl7.org/CodeSystem/condition-ver-status": "Condition verification status (HL7)",
}

COPYRIGHT_NOTES = {
    SNOMED: "SNOMED CT content is copyright SNOMED International (IHTSDO); its use may require "
    "a SNOMED CT Affiliate Licence.",
    LOINC: "LOINC content is copyright Regenstrief Institute, Inc. and the LOINC Committee, "
    "available at no cost under the licence at http://loinc.org/license.",
    CPT: "CPT codes and descriptors are copyright the American Medical Association; "
    "all rights reserved. Use of CPT requires a licence from the AMA.",
    RXNORM: "RxNorm is produced by the US National Library of Medicine.",
}

# The RxNorm ingredient code for cyclobenzaprine is listed (with a note on where it was seen)
# in rxnorm-cyclobenzaprine.json and, under ``unverified``, in clinical.json's
# allergy-substances group (where no SNOMED CT substance concept was found). It is shipped from
# the RxNorm file only: in ``cyclobenzaprine`` and in the union ``cyclobenzaprine-allergens``.
ALLOWED_DESPITE_UNVERIFIED = {
    (RXNORM, "21949"): {"cyclobenzaprine", "cyclobenzaprine-allergens"},
}

# Broad codes that describe spasm anywhere; they mean back spasm only together with a back
# body site, and no body-site codes are among the verified codes.
BACK_SPASM_EXCLUDED = {(ICD10CM, "M62.838"), (SNOMED, "45352006")}

# SNOMED CT myocardial-infarction codes of cyclobenzaprine-cardiac-contraindications.
MI_SNOMED_CODES = ["22298006", "57054005", "401303003", "401314000"]

PAIN_0_10_CODES = ["72514-3", "38208-5", "38221-8"]

STRENGTHS = [  # (id suffix, name part, mg)
    ("5-mg", "5Mg", 5.0),
    ("7-5-mg", "7_5Mg", 7.5),
    ("10-mg", "10Mg", 10.0),
    ("15-mg", "15Mg", 15.0),
    ("30-mg", "30Mg", 30.0),
]

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
# Where the codes come from: each code's ``source`` (clinical.json) or each file's ``source``
# (rxnorm-*.json) is matched against these markers; every code must match at least one.

CLINICAL_SOURCE_RULES = [
    ("CMS ICD-10-CM", "the CMS ICD-10-CM code table (April 2026 release)"),
    ("[IPS]", "the SNOMED CT IPS free set used by the HL7 International Patient Summary "
     "implementation guide"),
    ("[VSAC]", "eCQM value-set expansions of the NLM Value Set Authority Center (VSAC)"),
    ("[SYN]", "Synthea synthetic patient records"),
    ("[R4]", "value-set expansions of the FHIR R4 (4.0.1) core specification"),
    ("HL7/UTG", "the HL7 Terminology (THO) code systems used by the FHIR R4 Condition resource"),
    ("PT billing-code list", "publicly available physical-therapy billing-code lists"),
    ("CPT descriptors", "publicly available CPT descriptor lists"),
    ("DME HCPCS list", "a publicly available durable-medical-equipment HCPCS list"),
    ("pages: ", "public HCPCS Level II code reference pages"),
    ("single public GitHub file mapping", "a public code mapping for massage and a FHIR "
     "implementation-guide example (a weak source, see the judgement calls)"),
    ("public FHIR FSH example", "published FHIR example content and the C-CDA problem "
     "severity value set"),
]

SANDBOX_SOURCE = (
    "the RxNorm medication list distributed with the CDS Hooks Sandbox (cds-hooks/sandbox)"
)
INGREDIENT_LIST_SOURCE = "a public RxNorm-based list of skeletal muscle relaxant ingredients"
CDC_IG = "the CDC Opioid Prescribing Guideline implementation guide (cqframework/opioid-cds-r4)"


def _clinical_sources(code: dict) -> list[str]:
    found = [label for marker, label in CLINICAL_SOURCE_RULES if marker in code["source"]]
    if not found:
        raise ValueError(f"unknown source for {code['system']}|{code['code']}: {code['source']!r}")
    return found


def _rx_sources(file: dict, code: dict) -> list[str]:
    if "verified" in code:
        return [INGREDIENT_LIST_SOURCE]
    src = file["source"]
    if "CDS Hooks Sandbox" in src:
        return [SANDBOX_SOURCE]
    if "CDC Opioid" in src:
        return [f"value sets of {CDC_IG}"]
    raise ValueError(f"unknown source in {file['id']}: {src!r}")


# clinical-red-flags.json: the same markers, except that each VSAC value set is named, so that the
# descriptions of its ValueSets say which value set a code was seen in.
RED_FLAGS_FILE = "clinical-red-flags.json"
_VSAC_VALUE_SET = re.compile(r'\[VSAC\] canvas-plugins (v\d{4})/[\w.]+ value set "([^"]+)"')
VSAC_CANVAS_NOTE = (
    "The VSAC value sets were read in the expansions published in the canvas-medical/"
    "canvas-plugins repository (`canvas_sdk/value_set`, folders v2022 and v2026); for each SNOMED "
    "CT code the terminology file gives the file and line where it was seen."
)


def _red_flag_sources(code: dict) -> list[str]:
    src = code["source"]
    if src.lstrip().upper().startswith("UNVERIFIED"):
        raise ValueError(f"{code['system']}|{code['code']} is listed under codes but its source "
                         f"says unverified: {src!r}")
    labels = [label for marker, label in CLINICAL_SOURCE_RULES
              if marker != "[VSAC]" and marker in src]
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

RED_FLAG_GROUPS = ("back-pain-red-flags", "anticholinergic-cautions")

_ICD_CODE = re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")
_SEQUELA_ENTRY = re.compile(r"\(7th character ([A-Z])\) .* under (.+)")


def _icd_7th(code: str) -> str | None:
    """The 7th character of an ICD-10-CM code (S22.000A -> 'A'), None for shorter codes."""
    plain = code.replace(".", "")
    return plain[6] if len(plain) == 7 else None


def _not_malunion(c: dict) -> bool:
    return not (c["system"] == ICD10CM and _icd_7th(c["code"]) == "P")


# Rows whose subgroup starts with 'Optional' are broader than the protocol's red flags (cauda
# equina syndrome, cord compression, spinal infection, vertebral fracture, spinal metastasis).
# Each Optional subgroup needs a decision here, keyed by the start of its subgroup text (an
# undecided one stops the build); the decision is a test on the row, True ships it. Why: see the
# notes of back-pain-red-flags in TEXTS.
OPTIONAL_RED_FLAG_ROWS = [
    # A vertebral fracture that has not united (routine or delayed healing, nonunion) is still a
    # vertebral fracture: the 7th character names the encounter, not the state of the bone.
    # Malunion (P) means the fracture has united, like the sequela codes the file leaves out.
    ("Optional: vertebral fracture, osteoporotic / collapsed vertebra, subsequent encounter",
     _not_malunion),
    ("Optional: traumatic thoracic or lumbar vertebral fracture, subsequent encounter",
     _not_malunion),
    # Metastases to the spinal cord, spinal meninges or cauda equina are spinal metastases.
    ("Optional: secondary malignant neoplasm inside the spinal canal", lambda c: True),
]

# What is not shipped from the rows listed under ``codes``, by ValueSet: the Optional rows that the
# decisions above leave out, and the rows that the file also lists under ``notes.left_out``. The
# notes in TEXTS name these codes, so a change of the terminology file that changes this list
# stops the build until the notes have been reread.
RED_FLAG_NOT_SHIPPED = {
    "back-pain-red-flags": {
        (ICD10CM, "G95.81"),  # conus medullaris syndrome: also under notes.left_out
        (ICD10CM, "C41.2"),  # primary malignant neoplasm of vertebral column: also left_out
        (ICD10CM, "M80.08XP"),  # malunion (Optional row left out)
        (ICD10CM, "M80.88XP"),  # malunion (Optional row left out)
    },
    "anticholinergic-cautions": set(),
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
    raise ValueError(f"cannot read the left_out entry {system}|{code!r} of {RED_FLAGS_FILE}")


def _is_left_out(concept: dict, tests: list) -> bool:
    return any(test(concept["system"], concept["code"]) for test in tests)


def _red_flag_plan(gid: str, group: dict) -> dict:
    """Shipped and not-shipped rows of one group of clinical-red-flags.json."""
    tests = group["_left_out"]
    shipped, dropped = [], []
    for c in group["codes"]:
        keep = not _is_left_out(c, tests)
        if keep and c.get("subgroup", "").startswith("Optional"):
            decisions = [d for prefix, d in OPTIONAL_RED_FLAG_ROWS
                         if c["subgroup"].startswith(prefix)]
            if len(decisions) != 1:
                raise ValueError(f"{gid}: no decision for the Optional subgroup {c['subgroup']!r} "
                                 f"(add it to OPTIONAL_RED_FLAG_ROWS)")
            keep = decisions[0](c)
        (shipped if keep else dropped).append(c)
    not_shipped = {(c["system"], c["code"]) for c in dropped}
    if not_shipped != RED_FLAG_NOT_SHIPPED[gid]:
        raise ValueError(f"{gid}: the codes not shipped changed: {sorted(not_shipped)} instead of "
                         f"{sorted(RED_FLAG_NOT_SHIPPED[gid])}; reread the notes and update "
                         "RED_FLAG_NOT_SHIPPED")
    return {"concepts": shipped, "from": f"group {gid} of {RED_FLAGS_FILE}"}


def _check_not_left_out(vs_id: str, concepts: list[dict], term: dict) -> None:
    tests = term["groups"][vs_id]["_left_out"] if vs_id in RED_FLAG_GROUPS else []
    for c in concepts:
        if _is_left_out(c, tests):
            raise ValueError(f"{vs_id}: {(c['system'], c['code'])} is listed under notes.left_out "
                             f"in {RED_FLAGS_FILE}")


def _contents_markdown(vs_id: str, plan: dict, term: dict) -> str:
    """What the set holds, by subgroup of the terminology file, with what was not shipped."""
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
            counts.append(f"{SYSTEM_NAMES[system]} {n}")
        line = f"- {subgroup}: {', '.join(counts)}"
        left = [c for c in codes if (c["system"], c["code"]) not in shipped]
        if left:
            line += " (not shipped: " + ", ".join(
                f"{SYSTEM_NAMES[c['system']]} {c['code']}" for c in left) + ")"
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


def load_terminology(terminology_dir: Path) -> dict:
    """Read the terminology files: {'groups': {id: group}, 'rx': {id: file}, 'unverified': set}.

    Each code gets ``system``, ``code`` and a cleaned ``display`` plus ``_sources`` (labels). The
    groups of clinical-red-flags.json also get ``_left_out``: one test per notes.left_out entry.
    """
    terminology_dir = Path(terminology_dir)
    clinical = json.loads((terminology_dir / "clinical.json").read_text(encoding="utf-8"))
    unverified: set[tuple[str, str]] = set()
    groups = {}
    for gid, group in clinical["groups"].items():
        groups[gid] = dict(group, codes=_group_codes(group, _clinical_sources, unverified))
    red_flags = json.loads((terminology_dir / RED_FLAGS_FILE).read_text(encoding="utf-8"))
    left_out = red_flags.get("notes", {}).get("left_out", [])
    for gid, group in red_flags["groups"].items():
        if gid in groups or gid not in RED_FLAG_GROUPS:
            raise ValueError(f"unexpected group {gid!r} in {RED_FLAGS_FILE}")
        tests = [_left_out_test(e) for e in left_out if e["group"] == gid]
        groups[gid] = dict(group, codes=_group_codes(group, _red_flag_sources, unverified), _left_out=tests)
    rx = {}
    for path in sorted(terminology_dir.glob("rxnorm-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        codes = []
        for raw in data["codes"]:
            c = dict(raw)
            c["system"] = raw.get("system", data["system"])
            c["display"] = clean_display(raw["display"])
            c["_sources"] = _rx_sources(data, raw)
            codes.append(c)
        for raw in data.get("unverified", []):
            unverified.add((raw.get("system", data["system"]), raw["code"]))
        rx[data["id"]] = dict(data, codes=codes)
    return {"groups": groups, "rx": rx, "unverified": unverified}


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


# --------------------------------------------------------------------------------------------
# Texts. ``summary`` is plain text (it is also the narrative's paragraph); ``notes`` are the
# judgement calls, in markdown.

TEXTS: dict[str, dict] = {
    "back-muscle-spasm": {
        "title": "Muscle spasm of the back",
        "summary": "Diagnosis codes for a spasm of the back muscles. A patient aged 18 or over "
        "with an active condition coded from this set is in scope of the protocol.",
        "purpose": "Decides whether the protocol applies: an active Condition whose code is in "
        "this set puts the patient in scope.",
        "notes": [
            "The broader codes ICD-10-CM M62.838 (Other muscle spasm) and SNOMED CT 45352006 "
            "(Spasm) are left out on purpose. They describe a spasm anywhere in the body and "
            "would mean back spasm only together with a back body site on the Condition "
            "(`Condition.bodySite`); no body-site codes for the back are among the protocol's "
            "verified codes, so that guard cannot be expressed and only the back-specific codes "
            "are kept.",
        ],
    },
    "physical-therapy": {
        "title": "Physical therapy",
        "summary": "Procedures, regimes, referrals and CPT physical-medicine services that show "
        "a patient has had, or was referred for, physical therapy. The protocol looks for them "
        "on a completed Procedure, a ServiceRequest, a CarePlan activity or an Encounter type.",
        "purpose": "Finds the physical therapy on record, so that the cards can say when it "
        "took place (or that none was found).",
        "notes": [
            "Exercise therapy, movement therapy and stretching exercises are counted as physical "
            "therapy because they are what physical therapists commonly record; the same codes "
            "are also in `therapeutic-exercise`.",
            "Physical-therapy evaluations and re-evaluations (CPT 97161-97164) count as evidence "
            "of physical therapy even when no treatment session is recorded.",
            "Referrals to physiotherapy are included. A referral shows that therapy was ordered, "
            "not that it took place; the cards report what was found.",
        ],
    },
    "heat-therapy": {
        "title": "Superficial heat therapy",
        "summary": "Codes for superficial heat treatment. The protocol proposes moist heat in "
        "the first 48 hours and before exercise sessions afterwards, and recognises heat "
        "orders already placed.",
        "purpose": "Codes the heat-therapy order that the protocol proposes and recognises "
        "existing heat orders.",
        "notes": [
            "CPT 97010 covers hot or cold packs; it is included as the usual code for "
            "clinic-applied moist heat, although the same code also covers cold packs.",
            "The electric heating pad (SNOMED CT 27812008) is included so that heat ordered as "
            "a device (DeviceRequest) is recognised too.",
        ],
    },
    "therapeutic-exercise": {
        "title": "Therapeutic exercise",
        "summary": "Codes for supervised therapeutic exercise: gentle motor-control and "
        "strengthening exercise in early recovery, then an individually tailored, supervised "
        "programme during rehabilitation.",
        "purpose": "Codes the exercise orders that the protocol proposes in phases 2 and 3 and "
        "recognises existing ones.",
        "notes": [
            "Exercise on prescription, referral for exercise therapy and the exercise-promotion "
            "procedures (strength training, stretching) are taken as forms of the same "
            "recommendation.",
            "CPT 97112 (neuromuscular re-education) and 97530 (therapeutic activities) are "
            "included as the billing counterparts of motor-control and functional exercise.",
        ],
    },
    "massage-therapy": {
        "title": "Massage therapy",
        "summary": "Codes for therapeutic massage, which the protocol offers as an adjunct to "
        "exercise during rehabilitation.",
        "purpose": "Codes the massage order that the protocol proposes in phase 3 and "
        "recognises existing ones.",
        "notes": [
            "CPT 97124 is the preferred code for an order. SNOMED CT 387854002 (Therapeutic "
            "massage) is carried as well so that SNOMED-coded records match, but its meaning "
            "rests on a weak source; confirm it against a SNOMED CT release before relying on "
            "it alone.",
        ],
    },
    "multidisciplinary-rehabilitation": {
        "title": "Multidisciplinary rehabilitation",
        "summary": "Referral and procedure codes for multidisciplinary rehabilitation and pain "
        "management, proposed when the spasm persists for four weeks or more.",
        "purpose": "Codes the referral that the protocol proposes in phase 4 and recognises "
        "existing ones.",
        "notes": [
            "No code found means multidisciplinary rehabilitation as such. Referral to a "
            "physical rehabilitation service (SNOMED CT 78429003) is the code for the order; "
            "referral to a rehabilitation physician or a pain-management specialist, "
            "rehabilitation therapy and pain management are included as parts of such a "
            "programme.",
        ],
    },
    "not-recommended-for-back-spasm": {
        "title": "Orders without evidence of benefit for back muscle spasm",
        "summary": "Lumbar supports, TENS and spinal traction: orders for which the evidence "
        "shows no clear benefit in back muscle spasm. A draft order coded from this set gets an "
        "information card that suggests heat and exercise instead.",
        "purpose": "Recognises draft ServiceRequest and DeviceRequest orders that trigger the "
        "no-clear-benefit card.",
        "notes": [
            "The set is the union of `lumbar-supports`, `tens` and `spinal-traction`; their "
            "descriptions give the choices made for each (notably that CPT 97014 is electrical "
            "stimulation of any kind, not TENS specifically).",
        ],
    },
    "lumbar-supports": {
        "why": "the card names the kind of order, so lumbar supports, TENS and traction are kept"
        " in separate sets.",
        "title": "Lumbar supports, braces and corsets",
        "summary": "Devices and HCPCS orthoses that support the lumbar spine: lumbosacral "
        "belts, corsets, back rests and lumbar orthoses.",
        "purpose": "Recognises draft orders of a lumbar support, one of the three kinds of "
        "order without clear benefit for back spasm.",
        "notes": [
            "Back rests (SNOMED CT 20406008) are counted as lumbar supports.",
            "The HCPCS lumbar-orthosis descriptors are long; some are shortened in the displays, "
            "and L0642 carries a summary rather than the full descriptor. Matching is on the "
            "code only.",
        ],
    },
    "tens": {
        "why": "the card names the kind of order, so lumbar supports, TENS and traction are kept"
        " in separate sets.",
        "title": "Transcutaneous electrical nerve stimulation (TENS)",
        "summary": "TENS devices (HCPCS E0720, E0730) and the CPT service for unattended "
        "electrical stimulation.",
        "purpose": "Recognises draft orders of TENS, one of the three kinds of order without "
        "clear benefit for back spasm.",
        "notes": [
            "CPT 97014 is unattended electrical stimulation of any kind, not TENS specifically. "
            "It is included because TENS given in a clinic is usually ordered and billed with "
            "it; a card triggered by 97014 should say that the order is for electrical "
            "stimulation in general.",
        ],
    },
    "spinal-traction": {
        "why": "the card names the kind of order, so lumbar supports, TENS and traction are kept"
        " in separate sets.",
        "title": "Spinal traction",
        "summary": "Mechanical traction (CPT 97012) and the traction belt device.",
        "purpose": "Recognises draft orders of spinal traction, one of the three kinds of order "
        "without clear benefit for back spasm.",
        "notes": [
            "CPT 97012 does not name a body region; for a patient with back spasm it is taken "
            "as spinal traction.",
        ],
    },
    "hepatic-impairment-mild": {
        "title": "Mild hepatic impairment",
        "summary": "Chronic liver disease without cirrhosis (fatty liver, steatohepatitis, "
        "chronic hepatitis), taken as mild hepatic impairment: cyclobenzaprine is proposed only "
        "as 5 mg immediate release, titrated slowly.",
        "purpose": "Safety rule S5: limits cyclobenzaprine to 5 mg immediate release.",
        "notes": [
            "Coded conditions do not carry a Child-Pugh class, so the degree of impairment is "
            "inferred from the diagnosis: chronic liver disease without cirrhosis counts as "
            "mild, cirrhosis and decompensation as moderate or severe "
            "(`hepatic-impairment-moderate-severe`).",
            "The general codes for chronic liver disease (SNOMED CT 328383001, 79720007) are "
            "placed here; a patient whose cirrhosis is recorded only with such a general code "
            "is treated as mildly impaired.",
        ],
    },
    "hepatic-impairment-moderate-severe": {
        "title": "Moderate or severe hepatic impairment",
        "summary": "Cirrhosis, hepatic failure and signs of hepatic decompensation (portal "
        "hypertension, oesophageal varices, hepatic encephalopathy, hepatorenal and "
        "hepatopulmonary syndromes), taken as moderate or severe hepatic impairment: "
        "cyclobenzaprine is not recommended.",
        "purpose": "Safety rule S4: cyclobenzaprine is not proposed, and a draft order gets a "
        "warning.",
        "notes": [
            "Coded conditions do not carry a Child-Pugh class. Any cirrhosis is taken as at "
            "least moderate impairment, on the side of caution, although compensated cirrhosis "
            "can be Child-Pugh class A.",
            "Secondary oesophageal varices (ICD-10-CM I85.1x) are included as a sign of portal "
            "hypertension, although they can have causes outside the liver.",
        ],
    },
    "cyclobenzaprine-cardiac-contraindications": {
        "title": "Cardiac and thyroid contraindications to cyclobenzaprine",
        "summary": "Hyperthyroidism, cardiac arrhythmias, heart block and conduction "
        "disorders, heart failure, and myocardial infarction: the conditions in which the "
        "cyclobenzaprine labelling says not to use it.",
        "purpose": "Safety rule S2: cyclobenzaprine is not proposed, and a draft order gets a "
        "critical card.",
        "notes": [
            "The labelling contraindicates cyclobenzaprine in the acute recovery phase of "
            "myocardial infarction. The myocardial-infarction codes (subset "
            "`acute-myocardial-infarction`) therefore count only with an onset in the last 90 "
            "days; every other code counts while the condition is active.",
            "All arrhythmia codes are included, premature beats (ICD-10-CM I49.1-I49.49) among "
            "them, on the side of caution.",
            "Hyperthyroidism is coded in ICD-10-CM as thyrotoxicosis (E05.x); all its forms are "
            "included, factitious thyrotoxicosis among them.",
        ],
    },
    "acute-myocardial-infarction": {
        "why": "these codes block cyclobenzaprine only with an onset in the last 90 days, while "
        "the other contraindications count whenever active.",
        "title": "Myocardial infarction (counts within 90 days of onset)",
        "summary": "The myocardial-infarction codes of the cardiac contraindications: ICD-10-CM "
        "acute and subsequent myocardial infarction (I21, I22) and four SNOMED CT codes.",
        "purpose": "Safety rule S2: these conditions block cyclobenzaprine only when their "
        "onset is within the last 90 days.",
        "notes": [
            "SNOMED CT 22298006 (Myocardial infarction) does not say acute; it is included and "
            "the 90-day onset window decides whether it counts.",
            "A myocardial infarction with no onset date cannot be placed in the window; how to "
            "treat it is up to the logic that uses this set.",
        ],
    },
    "allergy-substances": {
        "title": "Allergy codes that block cyclobenzaprine (SNOMED CT)",
        "summary": "SNOMED CT codes for tricyclic antidepressants and for allergy to them, as "
        "they appear in AllergyIntolerance.code. Cyclobenzaprine is structurally related to the "
        "tricyclics, so an allergy to one is a reason not to propose it.",
        "purpose": "Safety rule S3, through `cyclobenzaprine-allergens`.",
        "notes": [
            "Both substance-style codes (tricyclic antidepressant, amitriptyline) and "
            "allergy-finding codes (tricyclic antidepressant drug allergy, amitriptyline "
            "allergy) are included, because AllergyIntolerance.code may carry either.",
            "The codes come from an older FHIR R4 expansion; in current SNOMED CT releases some "
            "may sit in the product hierarchy rather than among substances.",
            "No SNOMED CT substance code for cyclobenzaprine itself was found, so none is "
            "included. Allergy records coded with the RxNorm ingredient 21949 are caught "
            "through `cyclobenzaprine`, which is part of `cyclobenzaprine-allergens`.",
        ],
    },
    "observation-codes": {
        "title": "Pain severity observations and condition severity",
        "summary": "LOINC codes for pain-severity observations and SNOMED CT severity "
        "qualifiers (mild, moderate, severe) used in Condition.severity.",
        "purpose": "Finds the pain score and the severity that decide whether the spasm is "
        "severe.",
        "notes": [
            "The visual analogue score (LOINC 38214-3) is listed here but left out of "
            "`pain-severity-0-10`, because it is often recorded on a 0-100 mm scale.",
        ],
    },
    "pain-severity-0-10": {
        "why": "only scores on a 0-10 scale can be compared with the severe-pain threshold of 7.",
        "title": "Pain severity scores on a 0-10 scale",
        "summary": "LOINC pain-severity observations whose value is a 0-10 score: the verbal "
        "numeric rating, the reported pain severity and the Wong-Baker FACES scale.",
        "purpose": "Severe spasm: the most recent of these observations in the last 72 hours "
        "is compared with the threshold of 7.",
        "notes": [
            "The visual analogue score (LOINC 38214-3) is left out because it is often "
            "recorded on a 0-100 mm scale, where a threshold of 7 would be wrong.",
            "LOINC 38208-5 (Pain severity - Reported) does not fix the scale; it is included "
            "because it is commonly recorded as 0-10. Values above 10 should be treated as a "
            "different scale by the logic that uses this set.",
        ],
    },
    "condition-status": {
        "title": "Condition clinical and verification status",
        "summary": "The HL7 codes for Condition.clinicalStatus and "
        "Condition.verificationStatus.",
        "purpose": "Decides whether a condition counts as active: clinical status active, "
        "recurrence or relapse (or absent), and verification status not refuted or entered in "
        "error.",
        "notes": [
            "Every status code is listed; which of them count as active is decided by the "
            "protocol logic, not by membership in this set.",
        ],
    },
    "cyclobenzaprine": {
        "title": "Cyclobenzaprine (any product)",
        "summary": "RxNorm codes for every cyclobenzaprine product: immediate-release tablets "
        "(5, 7.5 and 10 mg), extended-release capsules (15 and 30 mg), branded products, "
        "dose-form groups, a combination with magnesium oxide, and the cyclobenzaprine "
        "ingredient.",
        "purpose": "Any cyclobenzaprine: proposals, draft orders, duplicate therapy, course "
        "length and allergy (safety rules S3, S8-S11).",
        "notes": [
            "The RxNorm ingredient code 21949 (cyclobenzaprine) is included because orders and, "
            "above all, allergy records often carry the ingredient rather than a product. It "
            "was found in a public RxNorm-based list of muscle-relaxant ingredients, not in the "
            "medication list the products come from. It is deliberately not in "
            "`allergy-substances`, which holds SNOMED CT codes only and where no cyclobenzaprine "
            "substance code was found.",
            "The combination of cyclobenzaprine with magnesium oxide is included: it contains "
            "cyclobenzaprine.",
        ],
    },
    "cyclobenzaprine-immediate-release": {
        "why": "the dose limits and the hepatic rule differ between immediate and extended "
        "release.",
        "title": "Cyclobenzaprine, immediate release",
        "summary": "The immediate-release cyclobenzaprine products (5, 7.5 and 10 mg tablets and "
        "their brands).",
        "purpose": "Dose and hepatic rules: immediate release is limited to 10 mg a dose and "
        "30 mg a day, and is the only form proposed in mild hepatic impairment.",
        "notes": [
            "Branded dose-form groups (Flexeril Pill, Fexmid Pill) are counted as immediate "
            "release. The generic dose-form groups (cyclobenzaprine Pill, cyclobenzaprine / "
            "magnesium oxide Pill) and the ingredient code do not say the release and are in "
            "neither release subset.",
        ],
    },
    "cyclobenzaprine-extended-release": {
        "why": "the dose limits and the hepatic rule differ between immediate and extended "
        "release.",
        "title": "Cyclobenzaprine, extended release",
        "summary": "The extended-release cyclobenzaprine products (15 and 30 mg 24-hour "
        "capsules and their brand).",
        "purpose": "Dose and hepatic rules: extended release is limited to 30 mg a day and is "
        "advised against in any hepatic impairment.",
        "notes": [
            "The branded dose-form group Amrix Pill is counted as extended release. Codes that "
            "do not say the release (generic dose-form groups, the ingredient) are in neither "
            "release subset.",
        ],
    },
    "cyclobenzaprine-allergens": {
        "title": "Allergy records that block cyclobenzaprine",
        "summary": "Codes that, on an AllergyIntolerance that is not refuted or resolved, block "
        "cyclobenzaprine: any cyclobenzaprine product or the ingredient, any tricyclic "
        "antidepressant product, and the SNOMED CT tricyclic allergy codes.",
        "purpose": "Safety rule S3: cyclobenzaprine is not proposed, and a draft order gets a "
        "critical card.",
        "notes": [
            "The set is the union of `cyclobenzaprine`, `tricyclic-antidepressants` and "
            "`allergy-substances`; the tricyclics are included because cyclobenzaprine is "
            "structurally related to them.",
        ],
    },
    "maoi": {
        "title": "Monoamine oxidase inhibitors",
        "summary": "RxNorm codes for monoamine oxidase inhibitors (phenelzine, "
        "tranylcypromine, isocarboxazid, selegiline, rasagiline and linezolid). "
        "Cyclobenzaprine must not be used with one, nor within 14 days of stopping one.",
        "purpose": "Safety rule S1: cyclobenzaprine is not proposed, and a draft order gets a "
        "critical card.",
        "notes": [
            "Methylene blue is left out: it acts as an MAO inhibitor when given intravenously, "
            "and the medication list holds only oral combination products with small amounts.",
            "Linezolid, a reversible MAO inhibitor, is included. The MAO-B inhibitors "
            "selegiline and rasagiline are included because the labelling names MAO inhibitors "
            "without distinction. Safinamide is not in the medication list.",
        ],
    },
    "serotonergic-drugs": {
        "title": "Serotonergic drugs named by the cyclobenzaprine labelling",
        "summary": "RxNorm codes for the serotonergic drugs that the cyclobenzaprine labelling "
        "names: SSRIs, SNRIs, tricyclic antidepressants, tramadol, bupropion, meperidine and "
        "verapamil, plus vilazodone and vortioxetine.",
        "purpose": "Safety rule S7: the card warns of serotonin syndrome and names the drug.",
        "notes": [
            "Vilazodone and vortioxetine are added as serotonergic antidepressants although the "
            "labelling does not name them.",
            "MAO inhibitors are not here: they are in `maoi` (rule S1). The tricyclic products "
            "are here and also in `tricyclic-antidepressants`.",
        ],
    },
    "tricyclic-antidepressants": {
        "title": "Tricyclic antidepressants",
        "summary": "RxNorm codes for tricyclic antidepressant products (amitriptyline, "
        "amoxapine, clomipramine, desipramine, doxepin, imipramine, nortriptyline, "
        "protriptyline, trimipramine).",
        "purpose": "Safety rule S3 (through `cyclobenzaprine-allergens`): cyclobenzaprine is "
        "structurally related to the tricyclics.",
        "notes": [
            "Products only: allergy records coded with a tricyclic ingredient or a SNOMED CT "
            "substance are matched through `allergy-substances` where a code is available.",
            "Combination products that contain a tricyclic (for example with perphenazine or "
            "chlordiazepoxide) are included.",
        ],
    },
    "cns-depressants": {
        "title": "Opioids, benzodiazepines and barbiturates",
        "summary": "RxNorm codes for opioid analgesics, benzodiazepines and barbiturates, which "
        "add to the sedation of cyclobenzaprine.",
        "purpose": "Safety rule S12: an information note on additive sedation.",
        "notes": [
            "Combination products that contain both an opioid and a barbiturate (butalbital "
            "with codeine) are in two of the source value sets; they are listed once.",
            "The opioid value set is limited to opioid analgesics with ambulatory misuse "
            "potential, as defined by the source; other opioids (for example injectables used "
            "only in hospital) are not covered.",
        ],
    },
    "back-pain-red-flags": {
        "title": "Red flags of serious spinal pathology",
        "summary": "Diagnoses that, in a patient with back pain, point to serious spinal "
        "pathology to be ruled out before the pain is treated as simple muscle spasm: cauda "
        "equina syndrome, compression of the spinal cord (compressive myelopathy included), "
        "spinal infection, vertebral fracture and spinal metastasis. An active condition coded "
        "from this set suspends the back-spasm protocol for the patient.",
        "purpose": "Red flags first (protocol section 1): an active condition from this set "
        "gives one critical card on patient-view that names it and asks for it to be evaluated "
        "first, with no plan card, proposal or CarePlan; a cyclobenzaprine, lumbar-support, TENS "
        "or traction draft order gets a warning card naming it.",
        "notes": [
            "Only active conditions count (clinical status active, recurrence or relapse, not "
            "refuted or entered in error, no abatement in the past). A fracture or infection that "
            "has healed stops the red flag once its Condition is resolved or given an abatement "
            "date.",
            "Subsequent-encounter fracture codes (the rows marked 'Optional' in the terminology "
            "file) are included for routine healing (7th character D), delayed healing (G) and "
            "nonunion (K), for traumatic thoracic and lumbar fractures and for osteoporotic "
            "fractures and collapsed vertebrae. The 7th character says which visit the code was "
            "recorded at, not that the fracture has been dealt with: an active condition with "
            "such a code is a vertebral fracture that has not yet united, problem lists often "
            "keep the code of the latest visit, and back pain during the healing of a vertebral "
            "fracture is not simple mechanical pain.",
            "Osteoporotic vertebral fracture with malunion (ICD-10-CM M80.08XP, M80.88XP, also "
            "'Optional') is left out: the fracture has united, in a poor position, and is no "
            "longer a fracture to rule out; for the same reason the terminology file leaves out "
            "the sequela codes (7th character S) of every fracture category.",
            "Metastases inside the spinal canal (SNOMED CT metastasis to the spinal cord, the "
            "spinal meninges or the cauda equina, also 'Optional') are included: they are spinal "
            "metastases and present with cord or cauda equina compression. No ICD-10-CM code "
            "specific to them is among the verified codes, so an intraspinal metastasis coded "
            "only in ICD-10-CM is not recognised.",
            "Conus medullaris syndrome (ICD-10-CM G95.81) and primary malignant neoplasm of the "
            "vertebral column (C41.2) are listed among the codes of the terminology file but also "
            "among what it leaves out, as candidates for clinical review: the first is not stated "
            "to be compressive, the second is a primary tumour, not a metastasis. They are not "
            "shipped until a clinician decides; both are serious spinal conditions and a patient "
            "coded with only one of them gets no red-flag card. Multiple myeloma (C90.0) is "
            "left out as well.",
            "Spinal metastasis: ICD-10-CM C79.51 (secondary malignant neoplasm of bone) and "
            "C79.52 (of bone marrow) do not say which bone, so a bone metastasis at any site "
            "counts, as do the SNOMED CT codes for metastasis to bone with no site. SNOMED CT "
            "codes that name a bone other than the spine (rib, skull, limb bones and others) are "
            "not included, so a metastasis coded only to such a bone does not count. Metastasis "
            "to the pelvic bones, sacrum and coccyx counts because it names the sacrum.",
            "Compression of the spinal cord includes spondylosis and disc disorders with "
            "myelopathy at every level, cervical included. Myelopathies that are not stated to "
            "be compressive (transverse myelitis, drug or radiation myelopathy, myelopathy in "
            "diseases classified elsewhere) are left out, and so is SNOMED CT 202664003 "
            "(Cervical myelopathy), whose cause is not given.",
            "Spinal infection: vertebral osteomyelitis, infective discitis (ICD-10-CM M46.4- "
            "discitis, unspecified, included), other infective spondylopathies, tuberculosis of "
            "the spine, gonococcal spondylopathy and intraspinal abscess (G06.1, which also "
            "covers intraspinal granuloma). G06.2 (extradural or subdural abscess, site not "
            "given) is left out because it may be intracranial. No SNOMED CT code for a "
            "non-tuberculous spinal epidural abscess was verified (only ICD-10-CM G06.1 catches "
            "it), and SNOMED CT 447332005 (tuberculous abscess of epidural space) is not shipped "
            "because its source did not show it as spinal. A tuberculous abscess of the spinal "
            "cord (SNOMED CT 417484006) counts as an intraspinal abscess; tuberculosis or a "
            "tuberculoma of the spinal cord or spinal meninges without an abscess or vertebral "
            "involvement is left out.",
            "Vertebral fracture: traumatic fractures of the thoracic and lumbar vertebrae (initial "
            "encounter, closed or open) and osteoporotic, pathological or compression fractures "
            "and collapsed vertebrae at any level. Traumatic fractures of the cervical spine, "
            "sacrum and coccyx, fatigue (stress) fractures of a vertebra, and pathological "
            "fractures coded to 'other site' (which do not name the spine) are left out.",
            "Aortic aneurysm and dissection can present as back pain but are not spinal pathology "
            "and are outside this rule; ankylosing spondylitis is left out too.",
        ],
    },
    "anticholinergic-cautions": {
        "title": "Conditions calling for caution with cyclobenzaprine (atropine-like action)",
        "summary": "Urinary retention, angle-closure glaucoma (with eyes at risk of angle "
        "closure) and raised intraocular pressure: the conditions in which the cyclobenzaprine "
        "labelling asks for caution because of the drug's atropine-like action. A condition "
        "from this set on record, active or resolved, makes the cyclobenzaprine proposal a "
        "warning.",
        "purpose": "Safety rule S13: cyclobenzaprine is still proposed, but the proposal card is "
        "a warning naming the condition and the risk (retention made worse, an acute rise in eye "
        "pressure); a cyclobenzaprine draft order gets a warning card with override reasons and "
        "no suggestion to remove it.",
        "notes": [
            "The labelling speaks of a history of these conditions, so a resolved condition "
            "counts too; only records that are refuted or entered in error are ignored.",
            "Urinary retention of any kind is included (acute, chronic, drug-induced, "
            "postprocedural, unspecified). Incomplete emptying of the bladder (SNOMED CT "
            "249288007) is left out because it is not recorded as retention.",
            "Angle closure: primary angle-closure glaucoma of every type, eye and stage (acute, "
            "chronic, intermittent, residual) and secondary angle-closure glaucoma are included. "
            "Eyes with a narrow angle or a primary angle closure without glaucoma damage "
            "(ICD-10-CM H40.03-, H40.06-; SNOMED CT angle-closure glaucoma suspect) are included "
            "too, on the side of caution: they are the eyes in which a drug that dilates the "
            "pupil can set off an acute angle closure. SNOMED CT 419422001 (Narrow angle) and "
            "392300000 (Phacomorphic glaucoma) and ICD-10-CM H40.83 (Aqueous misdirection) are "
            "not shipped: their sources did not show them as angle closure.",
            "Raised intraocular pressure is coded as ocular hypertension (ICD-10-CM H40.05-, "
            "SNOMED CT 4210003). A steroid responder (H40.04) is left out: it is a tendency to "
            "raised pressure under steroids, not raised pressure.",
            "Open-angle glaucoma, open angle with borderline findings, preglaucoma, glaucoma "
            "suspect, glaucoma of unstated type (SNOMED CT 23986001) and secondary glaucoma whose "
            "mechanism is not stated (ICD-10-CM H40.3-H40.6) are left out: the labelling names "
            "angle closure, not glaucoma in general. A patient whose glaucoma is recorded "
            "without its type gets no caution card.",
            "The labelling also asks for caution in patients taking anticholinergic medication. "
            "This set holds conditions only; that part of the caution is not covered by it.",
        ],
    },
}

for _suffix, _name, _mg in STRENGTHS:
    _mg_text = f"{_mg:g}"
    TEXTS[f"cyclobenzaprine-{_suffix}"] = {
        "title": f"Cyclobenzaprine {_mg_text} mg",
        "why": "the dose of a draft order is computed from the strength of its product.",
        "summary": f"The cyclobenzaprine products with {_mg_text} mg of cyclobenzaprine "
        "hydrochloride per unit.",
        "purpose": "Dose rules: the strength of a draft order, to compute the dose and the "
        "daily amount and to check the hepatic and dose limits.",
        "notes": [
            "Dose-form groups and the ingredient code carry no strength and are in no strength "
            "subset."
            + (
                " The capsule that combines 10 mg cyclobenzaprine with 200 mg magnesium oxide "
                "is counted here."
                if _mg == 10.0
                else ""
            ),
        ],
    }

# Output order of the ValueSets.
VALUESET_IDS = [
    "back-muscle-spasm",
    "physical-therapy",
    "heat-therapy",
    "therapeutic-exercise",
    "massage-therapy",
    "multidisciplinary-rehabilitation",
    "lumbar-supports",
    "tens",
    "spinal-traction",
    "not-recommended-for-back-spasm",
    "hepatic-impairment-mild",
    "hepatic-impairment-moderate-severe",
    "cyclobenzaprine-cardiac-contraindications",
    "acute-myocardial-infarction",
    "allergy-substances",
    "observation-codes",
    "pain-severity-0-10",
    "condition-status",
    "cyclobenzaprine",
    "cyclobenzaprine-immediate-release",
    "cyclobenzaprine-extended-release",
    *[f"cyclobenzaprine-{s}" for s, _, _ in STRENGTHS],
    "maoi",
    "serotonergic-drugs",
    "tricyclic-antidepressants",
    "cns-depressants",
    "cyclobenzaprine-allergens",
    "back-pain-red-flags",
    "anticholinergic-cautions",
]


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


def _plan(term: dict) -> dict[str, dict]:
    """What each ValueSet holds: {'concepts': [...], 'parent': id?} or {'union': [ids]}."""
    groups, rx = term["groups"], term["rx"]
    plan: dict[str, dict] = {}
    for gid, group in groups.items():
        if gid in RED_FLAG_GROUPS:
            plan[gid] = _red_flag_plan(gid, group)
            continue
        concepts = group["codes"]
        if gid == "back-muscle-spasm":
            concepts = [c for c in concepts if (c["system"], c["code"]) not in BACK_SPASM_EXCLUDED]
        plan[gid] = {"concepts": concepts, "from": f"group {gid} of clinical.json"}
    for rid, data in rx.items():
        plan[rid] = {"concepts": data["codes"], "from": f"rxnorm file {rid}"}

    nrec = groups["not-recommended-for-back-spasm"]["codes"]
    for vs_id, prefix in (("lumbar-supports", "7a"), ("tens", "7b"), ("spinal-traction", "7c")):
        plan[vs_id] = {
            "concepts": [c for c in nrec if c.get("subgroup", "").startswith(prefix)],
            "parent": "not-recommended-for-back-spasm",
        }
    plan["not-recommended-for-back-spasm"] = {
        "union": ["lumbar-supports", "tens", "spinal-traction"]
    }

    cardiac = groups["cyclobenzaprine-cardiac-contraindications"]["codes"]
    icd_mi = [c for c in cardiac if c["system"] == ICD10CM and "I21-I22" in c.get("subgroup", "")]
    plan["acute-myocardial-infarction"] = {
        "concepts": icd_mi + _pick(cardiac, SNOMED, MI_SNOMED_CODES, "cardiac contraindications"),
        "parent": "cyclobenzaprine-cardiac-contraindications",
    }

    obs = groups["observation-codes"]["codes"]
    plan["pain-severity-0-10"] = {
        "concepts": _pick(obs, LOINC, PAIN_0_10_CODES, "observation-codes"),
        "parent": "observation-codes",
    }

    cbz = rx["cyclobenzaprine"]["codes"]
    for release in ("immediate", "extended"):
        plan[f"cyclobenzaprine-{release}-release"] = {
            "concepts": [c for c in cbz if c.get("release") == release],
            "parent": "cyclobenzaprine",
        }
    for suffix, _name, mg in STRENGTHS:
        plan[f"cyclobenzaprine-{suffix}"] = {
            "concepts": [c for c in cbz if c.get("strength_mg") is not None
                         and float(c["strength_mg"]) == mg],
            "parent": "cyclobenzaprine",
        }
    plan["cyclobenzaprine-allergens"] = {
        "union": ["cyclobenzaprine", "tricyclic-antidepressants", "allergy-substances"]
    }
    missing = [i for i in VALUESET_IDS if i not in plan]
    extra = [i for i in plan if i not in VALUESET_IDS]
    if missing or extra:
        raise ValueError(f"terminology files and ValueSet list disagree: missing {missing}, "
                         f"unexpected {extra}")
    for vs_id, item in plan.items():
        if "concepts" in item:
            item["concepts"] = _by_system(_dedupe(item["concepts"]))
            if not item["concepts"]:
                raise ValueError(f"ValueSet {vs_id} would be empty")
    return plan


def _check_verified(vs_id: str, concepts: list[dict], unverified: set) -> None:
    for c in concepts:
        key = (c["system"], c["code"])
        if key in unverified and vs_id not in ALLOWED_DESPITE_UNVERIFIED.get(key, set()):
            raise ValueError(f"{vs_id}: {key} is listed as unverified in the terminology files")


def _sources_markdown(vs_id: str, plan: dict, concepts: list[dict], term: dict) -> str:
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
                     f"{TEXTS[vs_id]['why']}")
        lines.append("")
    if vs_id == "cns-depressants":
        canonicals = []
        for c in concepts:
            if c["from_valueset"] not in canonicals:
                canonicals.append(c["from_valueset"])
        lines.append(f"Where the codes come from: they are the RxNorm expansions of these value "
                     f"sets of {CDC_IG}:")
        lines.append("")
        lines.extend(f"- `{url}`" for url in canonicals)
        return "\n".join(lines)
    lines.append("Where the codes come from:")
    lines.append("")
    for system, labels in by_system.items():
        lines.append(f"- {SYSTEM_NAMES.get(system, system)}: {'; '.join(labels)}")
    if vs_id in RED_FLAG_GROUPS and any(label.startswith("the VSAC") for labels in
                                        by_system.values() for label in labels):
        lines.append("")
        lines.append(VSAC_CANVAS_NOTE)
    return "\n".join(lines)


def _narrative(title: str, paragraph: str, contains: list[dict]) -> dict:
    esc = lambda s: html.escape(s, quote=False)  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(SYSTEM_NAMES.get(c['system'], c['system']))}</td>"
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


def build_valuesets(terminology_dir: Path, publication: dict) -> dict[str, dict]:
    """Build every ValueSet: {id: resource}, in output order."""
    term = load_terminology(Path(terminology_dir))
    plan = _plan(term)
    canonical = publication["canonical"].rstrip("/")
    version = publication["version"]
    url_of = lambda vs_id: f"{canonical}/ValueSet/{vs_id}"  # noqa: E731

    expansions: dict[str, list[dict]] = {}
    for vs_id in VALUESET_IDS:  # parts of a union come before the union
        item = plan[vs_id]
        if "union" in item:
            expansions[vs_id] = _dedupe([c for p in item["union"] for c in expansions[p]])
        else:
            expansions[vs_id] = item["concepts"]
        _check_verified(vs_id, expansions[vs_id], term["unverified"])
        _check_not_left_out(vs_id, expansions[vs_id], term)

    result: dict[str, dict] = {}
    for vs_id in VALUESET_IDS:
        item, texts = plan[vs_id], TEXTS[vs_id]
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
            *([_contents_markdown(vs_id, plan, term)] if vs_id in RED_FLAG_GROUPS else []),
            _sources_markdown(vs_id, plan, concepts, term),
            "Judgement calls:\n\n" + "\n".join(f"- {n}" for n in texts["notes"]),
        ])
        paragraph = f"{texts['summary']} It holds {len(contains)} codes."
        if "union" in item:
            paragraph += " It combines the value sets " + ", ".join(item["union"]) + "."
        systems = []
        for c in contains:
            if c["system"] not in systems:
                systems.append(c["system"])
        copyright_notes = [COPYRIGHT_NOTES[s] for s in systems if s in COPYRIGHT_NOTES]
        vs = {
            "resourceType": "ValueSet",
            "id": vs_id,
            "meta": {"profile": [SHAREABLE_VALUESET]},
            "text": _narrative(texts["title"], paragraph, contains),
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
    parser.add_argument("--publication", type=Path, default=DEFAULT_PUBLICATION,
                        help="publication metadata (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder of the ValueSet files (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing the files that differ")
    args = parser.parse_args(argv)

    publication = json.loads(args.publication.read_text(encoding="utf-8"))
    valuesets = build_valuesets(args.terminology, publication)
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
