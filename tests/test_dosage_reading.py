"""Reading a drafted cyclobenzaprine order's dosage (PROTOCOL.md §4a) for the dose limit (S9) and the course limit (S8).

A draft order reaches the order review in many shapes: the dose in mg (UCUM, unit text, SNOMED CT), as a count of
tablets or capsules, as a range; the doses a day as a frequency per period, a list of times of day, a list of
events (``when``) or a timing code; the course as bounds (a duration or a period), an expected supply, or a
quantity to dispense, with refills. §4a says how each is read; this module checks that the shipped content reads
them that way.

Two layers:

* table tests put each shape at its boundary (10 mg against 10.5 mg a dose, 30 against 31 mg a day, 21 against 22
  days...), so a reading that is off by one form or one unit fails by name;
* a hypothesis property test draws random valid dosages (1-3 steps, every shape above, any product) and compares
  the engine's cards with a small reference computation written from the words of §4a and the content's
  documented conventions (below), not from its FHIRPath.

The reference gives two verdicts, each ``over`` (the limit is exceeded), ``within`` or ``cannot`` (part of the
order cannot be read, so the limit cannot be checked). On the engine's side: S9 ``over`` is the
``draft-dose-too-high`` card, S8 ``over`` the ``draft-course-too-long`` card; ``cannot`` is the
``draft-unreadable`` warning naming the part (``the dose``, ``the number of doses a day``, ``the length of the
course``); ``within`` is neither.

Conventions of the content where §4a leaves room (the reference follows them):

* doses a day of a step: the most its timing allows among the forms present: frequency (frequencyMax when given)
  per the shortest period (``period``, not ``periodMax``) in s, min, h, d, wk (7 d), mo (30 d) or a (365 d); the
  number of ``timeOfDay`` entries; the number of ``when`` entries; the timing code (QD 1, BID 2, TID 3, QID 4,
  Q4H 6, Q6H 4, Q8H 3, Q12H 2, QOD 0.5); none of these, or a frequency without a period: cannot be checked;
* dose in mg of a step: ``doseQuantity`` (or ``doseRange.high``) in UCUM ``mg`` (system UCUM or none), unit text
  ``mg`` without a code, or SNOMED CT 258684004 (http or https, with or without a trailing slash); a count of
  tablets or capsules (UCUM annotations {tbl} {tablet} {tab} {pill} {capsule} {cap} and plurals, or unit text
  tablet(s)/tab(s)/pill(s)/capsule(s)/cap(s) without a code or with code '1') times the product's strength (5,
  7.5, 10 mg immediate release; 15, 30 mg extended release); anything else: cannot be checked;
* the limits hold for each step (the highest counts); they are never summed across steps;
* course days: the largest of any step's boundsDuration (d, wk x 7, mo x 30, h / 24), the whole days of a
  boundsPeriod with a start and an end (a date-only end counts to the end of its day), the expected supply times
  (1 + repeats), and the quantity in tablets times (1 + repeats) divided by the smallest tablets a day of the
  steps; none of these: the course length cannot be checked.

Every patient is 45 with a severe back spasm 20 hours ago, no liver disease and no other medicines, so that no
other rule adds a card (S5 and S6 are checked to stay silent, and have a few tests of their own at the end).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from datetime import date, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cds_support import cards, engine, get, review, rule_codes
from tests.patients import (
    CIRRHOSIS,
    CLOCK,
    CYCLOBENZAPRINE_5,
    CYCLOBENZAPRINE_7_5,
    CYCLOBENZAPRINE_10,
    CYCLOBENZAPRINE_ER_15,
    CYCLOBENZAPRINE_ER_30,
    FATTY_LIVER,
    SCT,
    UCUM,
    Patient,
)

__all__ = ["engine"]

GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
MILLIGRAM_SCT = "258684004"

TOO_HIGH = "draft-dose-too-high"
TOO_LONG = "draft-course-too-long"
UNREADABLE = "draft-unreadable"
#: What the draft-unreadable card names for each part of the order (PROTOCOL §4a: the card says so).
PART_DOSE = "the dose"
PART_PER_DAY = "the number of doses a day"
PART_COURSE = "the length of the course"

#: Strength in mg of one tablet or capsule, and whether the product is extended release (§4 S9).
PRODUCTS: dict[tuple[str, str, str], tuple[Fraction, bool]] = {
    CYCLOBENZAPRINE_5: (Fraction(5), False),
    CYCLOBENZAPRINE_7_5: (Fraction(15, 2), False),
    CYCLOBENZAPRINE_10: (Fraction(10), False),
    CYCLOBENZAPRINE_ER_15: (Fraction(15), True),
    CYCLOBENZAPRINE_ER_30: (Fraction(30), True),
}

# ---------------------------------------------------------------------------------- the reference reading (§4a)

#: Days in one unit of time (UCUM codes of Timing and Duration).
DAYS_IN = {"s": Fraction(1, 86400), "min": Fraction(1, 1440), "h": Fraction(1, 24), "d": Fraction(1), "wk": Fraction(7),
           "mo": Fraction(30), "a": Fraction(365)}
#: Doses a day of the timing codes §4a lists.
TIMING_CODES = {"QD": Fraction(1), "BID": Fraction(2), "TID": Fraction(3), "QID": Fraction(4), "Q4H": Fraction(6),
                "Q6H": Fraction(4), "Q8H": Fraction(3), "Q12H": Fraction(2), "QOD": Fraction(1, 2)}
COUNT_ANNOTATIONS = {"{tbl}", "{tablet}", "{tablets}", "{tab}", "{tabs}", "{pill}", "{pills}", "{capsule}", "{capsules}",
                     "{cap}", "{caps}"}
COUNT_WORDS = {"tablet", "tablets", "tab", "tabs", "pill", "pills", "capsule", "capsules", "cap", "caps"}
SNOMED_SYSTEMS = {"http://snomed.info/sct", "https://snomed.info/sct", "http://snomed.info/sct/", "https://snomed.info/sct/"}


def exact(value: Any) -> Fraction:
    """A JSON number as an exact fraction (7.5 is 15/2), so that boundaries such as 21 days are not lost to rounding."""
    return Fraction(str(value))


def is_milligrams(q: dict) -> bool:
    """UCUM mg (system UCUM or none), unit text mg without a code, or SNOMED CT 258684004 milligram."""
    code, system = q.get("code"), q.get("system")
    return ((code == "mg" and system in (None, UCUM)) or (code is None and q.get("unit") == "mg")
            or (code == MILLIGRAM_SCT and system in SNOMED_SYSTEMS))


def is_count(q: dict) -> bool:
    """A count of tablets or capsules: a UCUM annotation, or the unit word without a code (or with code '1')."""
    code, system = q.get("code"), q.get("system")
    return ((code in COUNT_ANNOTATIONS and system in (None, UCUM))
            or (code in (None, "1") and str(q.get("unit", "")).lower() in COUNT_WORDS))


def step_dose_mg(step: dict, strength: Fraction) -> Fraction | None:
    """Milligrams in one dose of a step: the dose quantity or the top of the dose range, in mg or in tablets."""
    dose_and_rate = step.get("doseAndRate") or [{}]
    q = dose_and_rate[0].get("doseQuantity") or (dose_and_rate[0].get("doseRange") or {}).get("high")
    if not q or q.get("value") is None:
        return None
    if is_milligrams(q):
        return exact(q["value"])
    if is_count(q):
        return exact(q["value"]) * strength
    return None


def step_per_day(step: dict) -> Fraction | None:
    """Doses a day of a step: the most that any timing form present allows; None when no form can be read."""
    timing = step.get("timing") or {}
    repeat = timing.get("repeat") or {}
    found: list[Fraction] = []
    frequency = repeat.get("frequencyMax", repeat.get("frequency"))
    if frequency is not None and repeat.get("period") and repeat.get("periodUnit") in DAYS_IN:
        found.append(exact(frequency) / (exact(repeat["period"]) * DAYS_IN[repeat["periodUnit"]]))
    if repeat.get("timeOfDay"):
        found.append(Fraction(len(repeat["timeOfDay"])))
    if repeat.get("when"):
        found.append(Fraction(len(repeat["when"])))
    found += [TIMING_CODES[c["code"]] for c in (timing.get("code") or {}).get("coding") or [] if c.get("code") in TIMING_CODES]
    return max(found) if found else None


def duration_days(q: dict | None) -> Fraction | None:
    if not q or q.get("value") is None or q.get("code") not in DAYS_IN:
        return None
    return exact(q["value"]) * DAYS_IN[q["code"]]


def period_days(period: dict) -> Fraction | None:
    """Whole days of a date-only period: from the start of its first day to the end of its last."""
    if not period.get("start") or not period.get("end"):
        return None
    return Fraction((date.fromisoformat(period["end"]) - date.fromisoformat(period["start"])).days + 1)


def course_sources(order: dict, strength: Fraction) -> dict[str, Fraction]:
    """The course lengths (days) that each source gives: 'bounds' (the largest of any step's boundsDuration or
    date-only boundsPeriod), 'supply' (expected supply x fills) and 'quantity' (tablets x fills / the smallest
    tablets a day of the steps, only when every step's tablets a day can be read)."""
    steps = order.get("dosageInstruction") or []
    sources: dict[str, Fraction] = {}
    bounds: list[Fraction] = []
    for step in steps:
        repeat = (step.get("timing") or {}).get("repeat") or {}
        if "boundsDuration" in repeat and (days := duration_days(repeat["boundsDuration"])) is not None:
            bounds.append(days)
        if "boundsPeriod" in repeat and (days := period_days(repeat["boundsPeriod"])) is not None:
            bounds.append(days)
    if bounds:
        sources["bounds"] = max(bounds)
    dispense = order.get("dispenseRequest") or {}
    fills = 1 + dispense.get("numberOfRepeatsAllowed", 0)
    if (supply := duration_days(dispense.get("expectedSupplyDuration"))) is not None:
        sources["supply"] = supply * fills
    q = dispense.get("quantity")
    if q and is_count(q) and (least := least_tablets_a_day(steps, strength)):
        sources["quantity"] = exact(q["value"]) * fills / least
    return sources


def least_tablets_a_day(steps: list[dict], strength: Fraction) -> Fraction | None:
    """The smallest tablets (or capsules) a day of the steps: dose in mg / strength x doses a day; None when any
    step's dose or doses a day cannot be read (the smallest is then unknown)."""
    per_step = []
    for step in steps:
        dose, per_day = step_dose_mg(step, strength), step_per_day(step)
        if dose is None or per_day is None:
            return None
        per_step.append(dose / strength * per_day)
    return min(per_step) if per_step else None


def course_days(order: dict, strength: Fraction) -> Fraction | None:
    """Length of the course (S8): the largest that bounds, supply or quantity give; None when none can be read."""
    sources = course_sources(order, strength)
    return max(sources.values()) if sources else None


def reference(order: dict, product: tuple[str, str, str]) -> dict:
    """The verdicts §4a gives for a draft: S9 and S8 each 'over', 'within' or 'cannot', and the unreadable parts."""
    strength, extended = PRODUCTS[product]
    steps = order.get("dosageInstruction") or []
    s9_over = s9_unknown = False
    parts: set[str] = set()
    for step in steps:
        dose, per_day = step_dose_mg(step, strength), step_per_day(step)
        if dose is None:
            parts.add(PART_DOSE)
        if per_day is None:
            parts.add(PART_PER_DAY)
        if not extended and dose is not None and dose > 10:
            s9_over = True                                      # immediate release: above 10 mg a dose
        elif dose is not None and per_day is not None:
            s9_over |= dose * per_day > 30                      # either release: above 30 mg a day
        else:
            s9_unknown = True
    days = course_days(order, strength)
    if days is None:
        parts.add(PART_COURSE)
    return {"s9": "over" if s9_over else "cannot" if s9_unknown else "within",
            "s8": "cannot" if days is None else "over" if days > 21 else "within",
            "parts": parts, "days": days}


def step_over_daily_limit_while_another_is_unreadable(order: dict, product: tuple[str, str, str]) -> bool:
    """No step is above 10 mg a dose, but one step is provably above 30 mg a day while another step's dose or doses
    a day cannot be read (see test_titration_step_over_the_daily_limit_is_flagged_beside_an_unreadable_step)."""
    strength, extended = PRODUCTS[product]
    readings = [(step_dose_mg(s, strength), step_per_day(s)) for s in order.get("dosageInstruction") or []]
    per_dose_over = not extended and any(d is not None and d > 10 for d, _ in readings)
    some_unreadable = any(d is None or p is None for d, p in readings)
    daily_over = any(d is not None and p is not None and d * p > 30 for d, p in readings)
    return daily_over and some_unreadable and not per_dose_over


# ---------------------------------------------------------------------------------- the engine's verdicts


def base() -> Patient:
    """45 years old, severe back spasm 20 hours ago, nothing else on record."""
    patient = Patient(45)
    patient.spasm(20)
    return patient


def unreadable_parts(result) -> set[str]:
    """The parts the draft-unreadable warning names (empty without that card)."""
    if UNREADABLE not in cards(result):
        return set()
    text = get(result, UNREADABLE).fields.get("description") or ""
    return {part for part in (PART_DOSE, PART_PER_DAY, PART_COURSE) if part in text}


def verdicts(result) -> dict:
    """The engine's verdicts, read from its cards in the terms of the reference."""
    parts = unreadable_parts(result)
    found = cards(result)
    return {"s9": "over" if TOO_HIGH in found else "cannot" if parts & {PART_DOSE, PART_PER_DAY} else "within",
            "s8": "over" if TOO_LONG in found else "cannot" if PART_COURSE in parts else "within",
            "parts": parts}


def draft(product=CYCLOBENZAPRINE_10, steps: list[dict] | None = None, dispense: dict | None = None, shape: str = "concept",
          patient: Patient | None = None) -> dict:
    """A draft MedicationRequest for the product with exactly these dosage steps and dispense request."""
    order = (patient or base()).draft_medication(product, shape=shape)
    order["dosageInstruction"] = steps if steps is not None else []
    order.pop("dispenseRequest", None)
    if dispense:
        order["dispenseRequest"] = dispense
    return order


def mg(value, code: str = "mg", system: str | None = UCUM, unit: str | None = None) -> dict:
    """A dose quantity; by default UCUM mg."""
    q: dict[str, Any] = {"value": value, "unit": unit or code}
    if system is not None:
        q["system"] = system
    if code is not None:
        q["code"] = code
    return q


def tablets(value, code: str = "{tbl}", unit: str = "tablet") -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def days(value, code: str = "d") -> dict:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def step(dose: dict | None = None, *, dose_range: tuple[dict, dict] | None = None, repeat: dict | None = None,
         code: str | None = None, bounds_days: int | None = 14) -> dict:
    """One dosage instruction: a dose (quantity or range), a timing (repeat and/or code) and, by default, 14 days."""
    out: dict[str, Any] = {}
    if dose is not None:
        out["doseAndRate"] = [{"doseQuantity": dose}]
    if dose_range is not None:
        out["doseAndRate"] = [{"doseRange": {"low": dose_range[0], "high": dose_range[1]}}]
    timing: dict[str, Any] = {}
    rep = dict(repeat or {})
    if bounds_days is not None:
        rep["boundsDuration"] = days(bounds_days)
    if rep:
        timing["repeat"] = rep
    if code is not None:
        timing["code"] = {"coding": [{"system": GTS, "code": code}]}
    if timing:
        out["timing"] = timing
    return out


def daily(n, period=1, unit="d", **extra) -> dict:
    return {"frequency": n, "period": period, "periodUnit": unit, **extra}


def check(engine, order: dict, product, *, s9: str | None = None, s8: str | None = None, parts: set[str] | None = None):
    """Review the draft; assert the engine's verdicts, agree with the reference, and that no other card appears."""
    patient = base()
    result = review(engine, patient, order)
    got = verdicts(result)
    want = reference(order, product)
    assert cards(result) <= {TOO_HIGH, TOO_LONG, UNREADABLE}, cards(result)
    if s9 is not None:
        assert got["s9"] == want["s9"] == s9, (got, want)
    if s8 is not None:
        assert got["s8"] == want["s8"] == s8, (got, want)
    if parts is not None:
        assert got["parts"] == want["parts"] == parts, (got, want)
    if TOO_HIGH in cards(result):
        assert rule_codes(get(result, TOO_HIGH)) == {"S9"}
    if TOO_LONG in cards(result):
        assert rule_codes(get(result, TOO_LONG)) == {"S8"}
    return result


# ---------------------------------------------------------------------------------- S9: each shape at its boundary

IR10, IR7_5, IR5, ER15, ER30 = CYCLOBENZAPRINE_10, CYCLOBENZAPRINE_7_5, CYCLOBENZAPRINE_5, CYCLOBENZAPRINE_ER_15, CYCLOBENZAPRINE_ER_30


@pytest.mark.parametrize("product,steps,expect", [
    (IR10, [step(mg(10), repeat=daily(3))], "within"),                                   # 10 mg a dose, 30 a day
    (IR10, [step(mg(10.5), repeat=daily(1))], "over"),                                   # 10.5 mg a dose, 10.5 a day
    (IR7_5, [step(mg(7.5), repeat=daily(4))], "within"),                                 # 30 mg a day
    (IR10, [step(mg(7.75), repeat=daily(4))], "over"),                                   # 31 mg a day, under 10 a dose
    (ER30, [step(mg(30), repeat=daily(1))], "within"),
    (ER30, [step(mg(31), repeat=daily(1))], "over"),                                     # extended release: 31 mg a day
    (IR10, [step(mg(10), repeat={"timeOfDay": ["08:00:00", "13:00:00", "18:00:00"]})], "within"),
    (IR10, [step(mg(10), repeat={"timeOfDay": ["08:00:00", "12:00:00", "16:00:00", "20:00:00"]})], "over"),   # 40 mg a day
    (IR10, [step(mg(10), repeat={"when": ["MORN", "NOON", "EVE"]})], "within"),
    (IR10, [step(mg(10), repeat={"when": ["MORN", "NOON", "EVE", "NIGHT"]})], "over"),                        # 40 mg a day
    (IR10, [step(mg(10), code="TID")], "within"),
    (IR10, [step(mg(10), code="QID")], "over"),
    (IR5, [step(mg(5), code="Q4H")], "within"),                                          # 6 x 5 = 30 mg a day
    (IR7_5, [step(mg(7.5), code="Q4H")], "over"),                                        # 6 x 7.5 = 45 mg a day
    (IR10, [step(mg(10), repeat=daily(1, frequencyMax=3))], "within"),
    (IR10, [step(mg(10), repeat=daily(1, frequencyMax=4))], "over"),                     # up to 4 a day: 40 mg
    (IR10, [step(mg(10), repeat=daily(1, 8, "h"))], "within"),                           # every 8 h: 3 a day
    (IR10, [step(mg(10), repeat=daily(1, 6, "h"))], "over"),                             # every 6 h: 4 a day
    (IR10, [step(mg(10), repeat=daily(1, 6, "h", periodMax=8))], "over"),                # the shortest period counts
    (IR5, [step(mg(5), repeat=daily(3)), step(mg(10), repeat=daily(3))], "within"),     # titration within the limits
    (IR5, [step(mg(5), repeat=daily(3)), step(mg(15), repeat=daily(1))], "over"),       # second step 15 mg a dose
    (IR5, [step(mg(10), repeat=daily(3)), step(mg(10), repeat=daily(3))], "within"),    # per step, never summed
    (IR10, [step(mg(10, MILLIGRAM_SCT, "http://snomed.info/sct", "milligram"), code="TID")], "within"),  # 10 mg, not 100
    (IR10, [step(mg(10, MILLIGRAM_SCT, "https://snomed.info/sct/", "milligram"), code="TID")], "within"),
    (IR10, [step(mg(10.5, MILLIGRAM_SCT, SCT, "milligram"), code="QD")], "over"),
    (IR10, [step(mg(10, system=None), code="TID")], "within"),                           # code mg without a system
    (IR10, [step({"value": 11, "unit": "mg"}, code="QD")], "over"),                      # unit text mg, no code
    (IR10, [step(tablets(1), code="TID")], "within"),
    (IR10, [step(tablets(2), repeat=daily(1))], "over"),                                 # 2 x 10 mg tablets = 20 mg a dose
    (IR5, [step(tablets(2, "{tablet}", "tablets"), code="TID")], "within"),              # 2 x 5 mg = 10 mg, 30 a day
    (IR5, [step({"value": 2, "unit": "Tablets"}, code="QID")], "over"),                  # unit text: 40 mg a day
    (IR5, [step({"value": 2, "unit": "tab", "code": "1"}, code="TID")], "within"),       # unit text with code '1'
    (IR10, [step(dose_range=(mg(5), mg(10)), code="TID")], "within"),
    (IR10, [step(dose_range=(mg(5), mg(15)), repeat=daily(1))], "over"),                 # the top of the range counts
    (ER15, [step(tablets(1, "{capsule}", "capsule"), code="BID")], "within"),           # 2 x 15 mg = 30 mg a day
    (ER15, [step(tablets(1, "{cap}", "cap"), code="TID")], "over"),                      # 45 mg a day
    (ER30, [step(tablets(1, "{capsule}", "capsule"), repeat=daily(1))], "within"),
    (ER30, [step(tablets(1, "{capsule}", "capsule"), repeat=daily(2))], "over"),        # 60 mg a day
    (ER30, [step(mg(30), code="QOD")], "within"),
    (IR10, [step(mg(10), repeat=daily(3, 1, "d"), code="QID")], "over"),                # two forms: the most counts
])
def test_s9_each_dose_and_timing_shape_at_its_boundary(engine, product, steps, expect):
    """S9 (immediate release above 10 mg a dose or 30 mg a day, extended release above 30 mg a day) read from every
    dose unit and every timing form §4a names, just at and just past each limit."""
    check(engine, draft(product, copy.deepcopy(steps)), product, s9=expect, s8="within", parts=set())


@pytest.mark.parametrize("dose", [mg(0.01, "g"), mg(10, "mL"), mg(10000, "ug"), mg(10, "mg", "http://snomed.info/sct"),
                                  mg(10, "258682000", SCT, "gram"), {"value": 1, "unit": "puff"}, None],
                         ids=["g", "mL", "ug", "mg-coded-as-snomed", "snomed-gram", "puff", "no-dose"])
def test_a_dose_that_is_neither_mg_nor_tablets_cannot_be_checked(engine, dose):
    """A dose in grams, millilitres or any other unit (or none) is not guessed: draft-unreadable names the dose, and
    no dose card claims a verdict."""
    product = CYCLOBENZAPRINE_10
    check(engine, draft(product, [step(dose, code="TID")]), product, s9="cannot", s8="within", parts={PART_DOSE})


@pytest.mark.parametrize("timing", [None, {"repeat": {"boundsDuration": days(14)}}, {"repeat": {"frequency": 3, "boundsDuration": days(14)}},
                                    {"code": {"coding": [{"system": GTS, "code": "AM"}]}, "repeat": {"boundsDuration": days(14)}}],
                         ids=["no-timing", "bounds-only", "frequency-without-period", "unlisted-code"])
def test_no_readable_timing_means_the_doses_a_day_cannot_be_checked(engine, timing):
    """Without a frequency per period, times of day, events or a listed timing code, the daily dose is unknown:
    draft-unreadable names the number of doses a day (and the course, when the timing held the only bounds)."""
    product = CYCLOBENZAPRINE_10
    dosage = {"doseAndRate": [{"doseQuantity": mg(10)}]}
    if timing:
        dosage["timing"] = timing
    dispense = None if timing else {"expectedSupplyDuration": days(14)}
    check(engine, draft(product, [dosage], dispense), product, s9="cannot", s8="within", parts={PART_PER_DAY})


def test_a_dose_above_10_mg_is_flagged_even_when_the_doses_a_day_are_unknown(engine):
    """15 mg in one dose is above the immediate-release maximum whatever the frequency: the dose card comes, and
    the warning still names the frequency it could not read."""
    product = CYCLOBENZAPRINE_10
    result = check(engine, draft(product, [step(mg(15))]), product, s9="over", s8="within", parts={PART_PER_DAY})
    assert UNREADABLE in cards(result)


# ---------------------------------------------------------------------------------- S8: each course shape at its boundary


def period_step(start: date, end: date) -> dict:
    return {"doseAndRate": [{"doseQuantity": mg(5)}],
            "timing": {"repeat": {**daily(3), "boundsPeriod": {"start": start.isoformat(), "end": end.isoformat()}}}}


TODAY = CLOCK.date()


@pytest.mark.parametrize("steps,dispense,expect,days_said", [
    ([period_step(TODAY, date(2026, 12, 24))], None, "over", 30),                       # 2026-11-25..12-24: 30 days
    ([period_step(TODAY, TODAY + timedelta(days=20))], None, "within", None),           # 21 days exactly
    ([period_step(TODAY, TODAY + timedelta(days=21))], None, "over", 22),
    ([step(mg(5), repeat=daily(3), bounds_days=21)], None, "within", None),
    ([step(mg(5), repeat=daily(3), bounds_days=22)], None, "over", 22),
    ([step(mg(5), repeat={**daily(3), "boundsDuration": days(3, "wk")}, bounds_days=None)], None, "within", None),
    ([step(mg(5), repeat={**daily(3), "boundsDuration": days(4, "wk")}, bounds_days=None)], None, "over", 28),
    ([step(mg(5), repeat=daily(3), bounds_days=None)], {"expectedSupplyDuration": days(14), "numberOfRepeatsAllowed": 1},
     "over", 28),                                                                        # 14 d, one refill: 28 days
    ([step(mg(5), repeat=daily(3), bounds_days=None)], {"expectedSupplyDuration": days(21), "numberOfRepeatsAllowed": 0},
     "within", None),
    ([step(mg(5), repeat=daily(3), bounds_days=None)], {"quantity": tablets(90)}, "over", 30),      # 90 at 3 a day
    ([step(mg(5), repeat=daily(3), bounds_days=None)], {"quantity": tablets(63)}, "within", None),  # 63 at 3 a day
    ([step(mg(5), repeat=daily(3), bounds_days=None)], {"quantity": tablets(63), "numberOfRepeatsAllowed": 1}, "over", 42),
    ([step(mg(10), repeat=daily(3), bounds_days=None)], {"quantity": tablets(126)}, "within", None),  # 2 tablets a dose
    ([step(mg(5), repeat=daily(3), bounds_days=7), step(mg(5), repeat=daily(1), bounds_days=14)],
     {"quantity": tablets(22)}, "over", 22),                                             # the smallest use a day: 1
    ([step(mg(5), repeat=daily(3), bounds_days=14)], {"expectedSupplyDuration": days(7), "quantity": tablets(90)},
     "over", 30),                                                                        # the largest source counts
])
def test_s8_each_course_shape_at_its_boundary(engine, steps, dispense, expect, days_said):
    """S8 (a course over 21 days) from bounds (duration in days or weeks, date-only period counted whole), expected
    supply with refills, and quantity with refills over the smallest tablets a day; the largest counts."""
    product = CYCLOBENZAPRINE_5
    result = check(engine, draft(product, copy.deepcopy(steps), dispense), product, s8=expect, s9="within", parts=set())
    if days_said is not None:
        assert f"{days_said} days" in get(result, TOO_LONG).fields["description"]


def test_without_bounds_supply_or_quantity_the_course_cannot_be_checked(engine):
    """No bounds, no supply and no quantity: draft-unreadable names the length of the course, and nothing else."""
    product = CYCLOBENZAPRINE_5
    order = draft(product, [step(mg(5), repeat=daily(3), bounds_days=None)], {"numberOfRepeatsAllowed": 0})
    check(engine, order, product, s9="within", s8="cannot", parts={PART_COURSE})


# ---------------------------------------------------------------------------------- cases that once went wrong

#: A titration whose first step has no readable doses a day and whose second is 10 mg four times a day (40 mg a day).
MASKED_TITRATION = [step(mg(5), bounds_days=7), step(mg(10), repeat=daily(4), bounds_days=14)]


def test_titration_step_over_the_daily_limit_is_flagged_beside_an_unreadable_step(engine):
    """Step 2 (10 mg four times a day = 40 mg a day) is over S9 whatever step 1 says; step 1's unknown frequency
    deserves its own warning but must not hide step 2's overdose."""
    product = CYCLOBENZAPRINE_10
    order = draft(product, copy.deepcopy(MASKED_TITRATION))
    assert reference(order, product)["s9"] == "over"
    result = review(engine, base(), order)
    assert TOO_HIGH in cards(result), cards(result)


def test_the_dose_card_says_the_dose_when_the_daily_amount_is_unknown(engine):
    """15 mg in one dose with no readable timing: the card is right to appear, and should say 15 mg."""
    product = CYCLOBENZAPRINE_10
    result = review(engine, base(), draft(product, [step(mg(15))]))
    description = get(result, TOO_HIGH).fields.get("description") or ""
    assert "15" in description, repr(description)


@pytest.mark.parametrize("repeat,count", [(daily(3, 1, "wk"), 9), (daily(1, 7, "h"), 72)], ids=["3-a-week-9-tablets", "every-7-h-72-tablets"])
def test_a_course_of_exactly_21_days_read_from_the_quantity_is_not_over(engine, repeat, count):
    """9 tablets at 3 a week, or 72 tablets at one every 7 hours, last exactly 21 days: not over S8."""
    product = CYCLOBENZAPRINE_5
    order = draft(product, [step(tablets(1), repeat=repeat, bounds_days=None)], {"quantity": tablets(count)})
    assert reference(order, product)["days"] == 21
    assert TOO_LONG not in cards(review(engine, base(), order))


def exactly_21_days_through_a_repeating_decimal(order: dict, product: tuple[str, str, str]) -> bool:
    """The rounding case (see test_a_course_of_exactly_21_days_read_from_the_quantity_is_not_over): the
    course is exactly 21 days, no source gives more, the quantity gives it, and a step's doses a day pass through a
    rate that no decimal writes exactly (one dose period of 7 hours, a week, a month or a year: 24/7, 1/7, 1/30,
    1/365 a day), so decimal arithmetic lands a hair above or below 21."""
    strength, _ = PRODUCTS[product]
    sources = course_sources(order, strength)
    if sources.get("quantity") != 21 or max(sources.values()) != 21:
        return False
    for step in order.get("dosageInstruction") or []:
        repeat = (step.get("timing") or {}).get("repeat") or {}
        if repeat.get("period") and repeat.get("periodUnit") in DAYS_IN:
            if not terminates(1 / (exact(repeat["period"]) * DAYS_IN[repeat["periodUnit"]])):
                return True
    return False


def terminates(value: Fraction) -> bool:
    """A decimal writes the fraction exactly (its denominator has no factor but 2 and 5)."""
    denominator = value.denominator
    for factor in (2, 5):
        while denominator % factor == 0:
            denominator //= factor
    return denominator == 1


def set_quantity_for_course(order: dict, product: tuple[str, str, str], course: int) -> bool:
    """Make the quantity the only source of the course and set it so the course is exactly ``course`` days
    (bounds and expected supply are removed; refills kept). False, unchanged, when the tablets a day cannot be
    read or the quantity would not be a short decimal."""
    strength, _ = PRODUCTS[product]
    steps = order.get("dosageInstruction") or []
    least = least_tablets_a_day(steps, strength)
    if not least:
        return False
    dispense = order.setdefault("dispenseRequest", {})
    value = course * least / (1 + dispense.get("numberOfRepeatsAllowed", 0))
    if (value * 100).denominator != 1:
        return False
    for step in steps:
        for key in ("boundsDuration", "boundsPeriod"):
            ((step.get("timing") or {}).get("repeat") or {}).pop(key, None)
    dispense.pop("expectedSupplyDuration", None)
    dispense["quantity"] = tablets(int(value) if value.denominator == 1 else float(value))
    return True


# ---------------------------------------------------------------------------------- property: random dosages against §4a

MG_VALUES = [2.5, 5, 7.5, 10, 10.5, 12.5, 15, 20, 30, 31, 45]
COUNT_VALUES = [0.5, 1, 1.5, 2, 3]
ODD_UNITS = [("g", UCUM, 0.01), ("mL", UCUM, 5), ("ug", UCUM, 10000), ("mg/kg", UCUM, 0.1), ("258682000", SCT, 0.01),
             ("{puff}", UCUM, 1)]


def _dose_quantity() -> st.SearchStrategy[dict | None]:
    """A dose quantity of any shape §4a names, an odd unit, or None (no dose)."""
    mg_value = st.sampled_from(MG_VALUES)
    count = st.sampled_from(COUNT_VALUES)
    return st.one_of(
        st.builds(lambda v: mg(v), mg_value),
        st.builds(lambda v: mg(v, system=None), mg_value),
        st.builds(lambda v: {"value": v, "unit": "mg"}, mg_value),
        st.builds(lambda v, s: mg(v, MILLIGRAM_SCT, s, "milligram"), mg_value, st.sampled_from(sorted(SNOMED_SYSTEMS))),
        st.builds(lambda v, c: tablets(v, c, c.strip("{}")), count, st.sampled_from(sorted(COUNT_ANNOTATIONS))),
        st.builds(lambda v, w, c: {"value": v, "unit": w, **({"code": "1"} if c else {})}, count,
                  st.sampled_from(sorted(COUNT_WORDS) + ["Tablet", "Capsules"]), st.booleans()),
        st.builds(lambda u: mg(u[2], u[0], u[1], u[0]), st.sampled_from(ODD_UNITS)),
        st.none(),
    )


@st.composite
def _dose(draw) -> dict | None:
    """doseAndRate of one step: a quantity, a range (its high in mg or tablets), or nothing."""
    if draw(st.integers(0, 5)) == 0:
        high = draw(st.one_of(st.builds(lambda v: mg(v), st.sampled_from(MG_VALUES)),
                              st.builds(lambda v: tablets(v), st.sampled_from(COUNT_VALUES))))
        low = dict(high, value=high["value"] / 2)
        return {"doseRange": {"low": low, "high": high}}
    q = draw(_dose_quantity())
    return None if q is None else {"doseQuantity": q}


PERIODS = [(1, "d"), (1, "d"), (2, "d"), (0.5, "d"), (4, "h"), (6, "h"), (7, "h"), (8, "h"), (12, "h"), (24, "h"), (5, "h"), (1, "wk"),
           (480, "min"), (28800, "s"), (1, "mo"), (1, "a")]
TIMES = ["08:00:00", "12:00:00", "14:00:00", "18:00:00", "22:00:00"]
EVENTS = ["MORN", "NOON", "AFT", "EVE", "NIGHT", "HS", "WAKE", "C", "ACM", "PCV"]


@st.composite
def _timing(draw) -> tuple[dict, dict | None]:
    """(repeat without bounds, timing code or None): one of the forms, sometimes with a timing code beside it."""
    form = draw(st.sampled_from(["frequency", "frequency", "timeOfDay", "when", "code", "none"]))
    repeat: dict[str, Any] = {}
    code = None
    if form == "frequency":
        frequency = draw(st.integers(1, 4))
        period, unit = draw(st.sampled_from(PERIODS))
        repeat = {"frequency": frequency, "period": period, "periodUnit": unit}
        if draw(st.booleans()):
            repeat["frequencyMax"] = draw(st.integers(frequency, 6))
        if draw(st.integers(0, 3)) == 0:
            repeat["periodMax"] = period * 2
    elif form == "timeOfDay":
        repeat = {"timeOfDay": sorted(draw(st.sets(st.sampled_from(TIMES), min_size=1, max_size=5)))}
    elif form == "when":
        repeat = {"when": draw(st.lists(st.sampled_from(EVENTS), min_size=1, max_size=5, unique=True))}
    if form == "code" or (form != "none" and draw(st.integers(0, 4)) == 0):
        code = {"coding": [{"system": GTS, "code": draw(st.sampled_from(sorted(TIMING_CODES)))}]}
    return repeat, code


@st.composite
def _bounds(draw) -> dict:
    """bounds[x] of one step: a duration in days or weeks, a date-only period, or none."""
    kind = draw(st.sampled_from(["duration-d", "duration-wk", "period", "none"]))
    if kind == "duration-d":
        return {"boundsDuration": days(draw(st.sampled_from([5, 7, 10, 14, 20, 21, 22, 28, 30])))}
    if kind == "duration-wk":
        return {"boundsDuration": days(draw(st.integers(1, 5)), "wk")}
    if kind == "period":
        start = TODAY + timedelta(days=draw(st.integers(0, 10)))
        length = draw(st.sampled_from([7, 14, 20, 21, 22, 28, 30]))
        return {"boundsPeriod": {"start": start.isoformat(), "end": (start + timedelta(days=length - 1)).isoformat()}}
    return {}


@st.composite
def _step(draw) -> dict:
    dosage: dict[str, Any] = {}
    dose = draw(_dose())
    if dose is not None:
        dosage["doseAndRate"] = [dose]
    repeat, code = draw(_timing())
    repeat = {**repeat, **draw(_bounds())}
    timing: dict[str, Any] = {}
    if repeat:
        timing["repeat"] = repeat
    if code:
        timing["code"] = code
    if timing:
        dosage["timing"] = timing
    return dosage


@st.composite
def _dispense(draw) -> dict | None:
    """dispenseRequest: any of expected supply, quantity (tablets or capsules) and repeats, or none."""
    if draw(st.integers(0, 3)) == 0:
        return None
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        if draw(st.integers(0, 3)) == 0:
            out["expectedSupplyDuration"] = days(draw(st.integers(1, 4)), "wk")
        else:
            out["expectedSupplyDuration"] = days(draw(st.sampled_from([7, 10, 14, 20, 21, 22, 28, 30])))
    if draw(st.booleans()):
        value = draw(st.sampled_from([7, 9, 12, 14, 15, 21, 30, 42, 60, 63, 64, 72, 84, 90, 126]))
        out["quantity"] = draw(st.sampled_from([tablets(value), tablets(value, "{capsule}", "capsule"),
                                                {"value": value, "unit": "tablets"}]))
    if draw(st.booleans()):
        out["numberOfRepeatsAllowed"] = draw(st.integers(0, 2))
    return out or None


#: Examples the property test ran, the verdicts it saw, and the examples in each known discrepancy (filled as it runs).
SEEN: Counter = Counter()
#: 3,500 derandomized examples: each is one order review (about 1-3 ms) plus drawing the draft; about 30 s in all.
EXAMPLES = 3500


def test_random_dosages_agree_with_the_reference_reading(engine):
    """Random valid dosages (1-3 steps; every dose unit, timing form, bounds, supply, quantity and product) give the
    verdicts the reference reading of §4a gives: over, within or cannot be checked, for S9 and for S8, with the
    draft-unreadable warning naming exactly the parts that cannot be read, and no other card.

    A quarter of the examples have their quantity set so that it alone gives exactly 21 or 22 days, to sit on the S8
    boundary. Two classes that once went wrong are counted as they pass: a step over 30 mg a day beside an
    unreadable step (over, not only 'cannot be checked'), and a course of exactly 21 days through a repeating
    decimal (within).
    """
    SEEN.clear()
    patient = base()
    started = time.perf_counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
    @given(product=st.sampled_from(list(PRODUCTS)), shape=st.sampled_from(["concept", "contained"]),
           steps=st.lists(_step(), min_size=1, max_size=3), dispense=_dispense(),
           course=st.sampled_from([None, None, None, 21, 22]))
    def agree(product, shape, steps, dispense, course):
        order = draft(product, steps, dispense, shape=shape, patient=patient)
        if course is not None and set_quantity_for_course(order, product, course):
            SEEN[f"quantity set for {course} days"] += 1
        want = reference(order, product)
        if step_over_daily_limit_while_another_is_unreadable(order, product):
            SEEN["a step over the daily limit beside an unreadable step"] += 1
        result = review(engine, patient, order)
        got = verdicts(result)
        if exactly_21_days_through_a_repeating_decimal(order, product):
            SEEN["exactly 21 days through a repeating decimal"] += 1
        assert cards(result) <= {TOO_HIGH, TOO_LONG, UNREADABLE}, cards(result)
        assert (got["s9"], got["s8"], got["parts"]) == (want["s9"], want["s8"], want["parts"]), (want, got, order)
        SEEN["examples"] += 1
        SEEN[f"S9 {want['s9']}"] += 1
        SEEN[f"S8 {want['s8']}"] += 1
        SEEN[f"{len(steps)} step(s)"] += 1

    agree()
    elapsed = time.perf_counter() - started
    print(f"\n{SEEN['examples']} examples in {elapsed:.1f} s: {dict(sorted(SEEN.items()))}")
    assert SEEN["examples"] >= EXAMPLES
    for verdict in ("over", "within", "cannot"):
        assert SEEN[f"S9 {verdict}"] >= EXAMPLES // 40, SEEN
        assert SEEN[f"S8 {verdict}"] >= EXAMPLES // 40, SEEN


# ---------------------------------------------------------------------------------- S5 and S6 read every step too


def test_a_patient_without_liver_disease_under_65_gets_no_s5_or_s6_card(engine):
    """The patients above are 45 with no liver disease: neither S5 nor S6 may add a card, even at 10 mg a dose."""
    result = review(engine, base(), draft(IR10, [step(mg(10), code="TID")]))
    assert not {"draft-mild-hepatic", "draft-older-adult"} & cards(result)


@pytest.mark.parametrize("product,steps,expect", [
    (IR5, [step(mg(5), code="TID")], False),
    (IR5, [step(mg(5), code="TID"), step(mg(7.5), code="TID")], True),           # second step above 5 mg
    (IR5, [step(dose_range=(mg(2.5), mg(7.5)), code="TID")], True),              # the top of the range counts
    (IR5, [step(tablets(2), code="QD")], True),                                  # 2 x 5 mg tablets = 10 mg
    (ER15, [step(tablets(1, "{capsule}", "capsule"), code="QD")], True),         # extended release in any hepatic impairment
])
def test_s5_single_dose_above_5_mg_in_any_step(engine, product, steps, expect):
    """S5 (mild hepatic impairment): a warning if any single dose of any step is above 5 mg, or for extended release."""
    patient = base()
    patient.condition(FATTY_LIVER)
    result = review(engine, patient, draft(product, copy.deepcopy(steps), patient=patient))
    assert ("draft-mild-hepatic" in cards(result)) is expect
    assert TOO_HIGH not in cards(result)


def test_s5_gives_way_to_s4_in_moderate_or_severe_impairment(engine):
    """Cirrhosis is moderate-severe (S4): the S5 card is not added beside the S4 one."""
    patient = base()
    patient.condition(CIRRHOSIS)
    result = review(engine, patient, draft(IR10, [step(mg(10), code="TID")], patient=patient))
    assert "draft-severe-hepatic" in cards(result) and "draft-mild-hepatic" not in cards(result)


@pytest.mark.parametrize("age,expect", [(64, False), (65, True)])
def test_s6_older_adult_whatever_the_dose_shape(engine, age, expect):
    """S6 (Beers) warns at 65 or over for any cyclobenzaprine draft, here a two-step titration within S9."""
    patient = Patient(age)
    patient.spasm(20)
    order = draft(IR5, [step(mg(5), code="TID", bounds_days=7), step(mg(10), code="TID", bounds_days=7)], patient=patient)
    result = review(engine, patient, order)
    assert ("draft-older-adult" in cards(result)) is expect
    assert TOO_HIGH not in cards(result) and TOO_LONG not in cards(result)
