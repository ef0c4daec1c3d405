"""The date/time model: parsing dates, dateTimes and times, comparison keys, calendar arithmetic, boundaries, intervals and time zones."""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from typing import Any, NamedTuple

_DATETIME_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_TEMPORAL_TYPES = frozenset({"date", "dateTime", "instant"})


class _DateTime(NamedTuple):
    """A parsed FHIRPath date/dateTime: components as written, precision 1 (year) to 6 (second)."""

    fields: tuple[int, ...]  # year, month, day, hour, minute, second (as many as written)
    fraction: str | None  # digits after the decimal point of the seconds, if written
    offset: int | None  # UTC offset in minutes, if written
    zone: str | None  # the offset as written ('Z', '+02:00')

    @property
    def precision(self) -> int:
        """Number of components written: 1 = year ... 6 = second (milliseconds included)."""
        return len(self.fields)

    def keys(self, default_offset: int, to_utc: bool) -> tuple:
        """Components compared by precision; seconds as a decimal; optionally shifted to UTC."""
        fields = self.fields
        seconds = Decimal(f"{fields[5]}.{self.fraction}") if self.fraction else None
        if to_utc:
            offset = self.offset if self.offset is not None else default_offset
            padded = list(fields) + [1] * (3 - min(len(fields), 3)) + [0] * (6 - max(len(fields), 3))
            utc = datetime(*padded) - timedelta(minutes=offset)
            fields = (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)[: len(self.fields)]
        keys: list = list(fields)
        if len(keys) == 6 and seconds is not None:
            keys[5] = Decimal(keys[5]) + (seconds - int(seconds))
        return tuple(keys)


def _fields_text(fields: Sequence[int], count: int) -> str:
    """``YYYY-MM-DDThh:mm:ss`` written from the first ``count`` components (1 = year ... 6 = second)."""
    separators = ("", "-", "-", "T", ":", ":")
    return "".join(f"{separators[i]}{value:0{4 if i == 0 else 2}d}" for i, value in enumerate(fields[:count]))


@lru_cache(maxsize=4096)
def _parse_datetime(text: str) -> _DateTime | None:
    """Parse a FHIRPath/FHIR date or dateTime text, or return None if it is not one."""
    match = _DATETIME_RE.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    fields = tuple(int(v) for v in (year, month, day, hour, minute, second) if v is not None)
    if not _on_the_calendar(fields) or (zone not in (None, "Z") and (int(zone[1:3]) > 14 or int(zone[4:6]) > 59)):
        return None
    offset = None
    if zone is not None:
        offset = 0 if zone == "Z" else int(zone[0] + "1") * (int(zone[1:3]) * 60 + int(zone[4:6]))
    return _DateTime(fields, fraction, offset, zone)


def _on_the_calendar(fields: tuple[int, ...]) -> bool:
    """Whether the components name a real moment: month 1-12, a day the month has, hour 0-23, minute and second 0-59
    (``1961-13-45`` or ``2026-02-30`` look like dates but are not, and must not be read as one)."""
    limits = ((1, 12), (1, None), (0, 23), (0, 59), (0, 59))
    for position, value in enumerate(fields[1:]):
        low, high = limits[position]
        if high is None:
            high = calendar.monthrange(fields[0], fields[1])[1] if fields[0] >= 1 else 31
        if not low <= value <= high:
            return False
    return True


_UNIT_TO_CALENDAR = {
    **{u: u for u in ("year", "month", "week", "day", "hour", "minute", "second", "millisecond")},
    **{u + "s": u for u in ("year", "month", "week", "day", "hour", "minute", "second", "millisecond")},
    "'a'": "year",
    "'mo'": "month",
    "'wk'": "week",
    "'d'": "day",
    "'h'": "hour",
    "'min'": "minute",
    "'s'": "second",
    "'ms'": "millisecond",
}
#: UCUM's year and month are definite durations (365.25 and 30.4375 days), not calendar periods: FHIRPath 2.0
#: ("Date/Time Arithmetic") makes adding them to a date an error.
_DEFINITE_YEAR_MONTH = frozenset({"'a'", "'mo'"})
_UNIT_PRECISION = {
    "year": 1, "month": 2, "week": 3, "day": 3, "hour": 4, "minute": 5, "second": 6, "millisecond": 6,
}
_PRECISION_UNIT = {1: "year", 2: "month", 3: "day", 4: "hour", 5: "minute"}
_UNIT_SECONDS = {
    "year": 365 * 86400,
    "month": 30 * 86400,
    "week": 7 * 86400,
    "day": 86400,
    "hour": 3600,
    "minute": 60,
    "second": 1,
    "millisecond": Decimal("0.001"),
}


def _shifted_datetime_text(value: _DateTime, quantity: Any, sign: int) -> str:
    """The text of value + sign * quantity (see the rules in the docstring of protocol.engine.fhirpath.operators).

    ``quantity`` is anything with the ``value`` and ``unit`` of a Quantity (a number, and a calendar
    word such as ``days`` or a quoted UCUM code such as ``'h'``).
    """
    unit = _UNIT_TO_CALENDAR.get(quantity.unit)
    if unit is None or quantity.unit in _DEFINITE_YEAR_MONTH:
        raise ValueError(
            f"date/time arithmetic needs a time quantity (years ... milliseconds, 'wk' ... 'ms'), got {quantity}"
        )
    amount = Decimal(str(quantity.value)) * sign
    if _UNIT_PRECISION[unit] < 6:
        amount = amount.to_integral_value(rounding=ROUND_DOWN)
    if unit == "week":
        unit, amount = "day", amount * 7
    precision = value.precision
    if _UNIT_PRECISION[unit] > precision and precision < 6:
        target = _PRECISION_UNIT[precision]
        if unit in ("year", "month") and target in ("year", "month"):
            amount = amount / 12  # months to years: the only finer-than-value case here
        else:
            amount = amount * _UNIT_SECONDS[unit] / _UNIT_SECONDS[target]
        unit, amount = target, amount.to_integral_value(rounding=ROUND_DOWN)

    fields = value.fields
    micro = int((value.fraction or "0")[:6].ljust(6, "0"))
    start = datetime(
        fields[0],
        fields[1] if precision > 1 else 1,
        fields[2] if precision > 2 else 1,
        fields[3] if precision > 3 else 0,
        fields[4] if precision > 4 else 0,
        fields[5] if precision > 5 else 0,
        micro,
    )
    if unit in ("year", "month"):
        months = start.year * 12 + start.month - 1 + int(amount) * (12 if unit == "year" else 1)
        year, month = divmod(months, 12)
        month += 1
        result = start.replace(year=year, month=month, day=min(start.day, calendar.monthrange(year, month)[1]))
    else:
        result = start + timedelta(microseconds=int(amount * _UNIT_SECONDS[unit] * 1_000_000))

    text = _fields_text((result.year, result.month, result.day, result.hour, result.minute, result.second), precision)
    if precision > 5:
        if value.fraction is not None or result.microsecond:
            digits = min(max(len(value.fraction or ""), 3), 6)
            text += "." + f"{result.microsecond:06d}"[:digits]
    if value.zone is not None:
        text += value.zone
    return text


# ---------------------------------------------------------------- time zone, boundaries and intervals
#
# The local time zone of an evaluation (EvaluationContext.zone) decides what a date or dateTime written
# without an offset means, and what "today" is; see the docstrings of _boundary_text and _interval for the
# semantics of lowBoundary()/highBoundary() and duration()/difference().


@lru_cache(maxsize=4096)
def _local_offset(zone: tzinfo, fields: tuple[int, ...], fold: int = 0) -> int:
    """UTC offset in minutes that ``zone`` has at a local date/time (the components written, the rest at their start).

    ``fold`` chooses between the readings of a local time that a daylight saving change makes occur twice
    or not at all: 0 takes the offset in force before the change, 1 the offset after it (``datetime.fold``).
    """
    padded = list(fields[:6]) + [1] * (3 - min(len(fields), 3)) + [0] * (6 - max(len(fields), 3))
    offset = zone.utcoffset(datetime(*padded, fold=fold))
    return int(offset.total_seconds()) // 60


def _assumed_offset(value: _DateTime, zone: tzinfo) -> int:
    """The UTC offset of a date/time: as written, else the zone's at that local time (the earlier reading if ambiguous)."""
    if value.offset is not None:
        return value.offset
    return _local_offset(zone, value.fields, 0)


def _offset_text(minutes: int) -> str:
    """An offset in minutes as written in a dateTime: ``+HH:MM`` or ``-HH:MM``."""
    hours, rest = divmod(abs(minutes), 60)
    return f"{'-' if minutes < 0 else '+'}{hours:02d}:{rest:02d}"


#: lowBoundary()/highBoundary() precision (digits of the value, as FHIRPath counts them) -> components kept.
_BOUNDARY_COMPONENTS = {4: 1, 6: 2, 8: 3, 10: 4, 12: 5, 14: 6, 17: 7}


@lru_cache(maxsize=4096)
def _boundary_text(value: _DateTime, precision: int | None, high: bool, zone: tzinfo) -> str | None:
    """The text of ``value.lowBoundary(precision)`` (high False) or ``value.highBoundary(precision)``; None is empty.

    FHIRPath 3.0 (STU): the least (greatest) value the input can denote, to ``precision`` digits: 4 year,
    6 month, 8 day, 10 hour, 12 minute, 14 second, 17 millisecond; another number gives empty.  Components
    the value lacks are filled with their least (greatest) value (month 1/12, day 1/last of the month,
    23, 59, 59, 000/999; a written fraction of a second is kept to milliseconds, as fhirpath.js does),
    components beyond the precision are dropped.

    Engine conventions, where the specification differs or leaves a choice:

    - Without a precision the result is a DateTime to milliseconds (17) for Dates too (the specification
      returns a Date, at day precision, for a Date): a date-only onset becomes the first millisecond of
      its day, a date-only end the last.
    - A result with a time part gets an offset: the value's own when it has one ('Z' stays 'Z'), else the
      offset that the evaluation's time zone has at that local time, computed for the boundary itself so
      that a daylight saving change that day is taken into account (in America/New_York,
      ``@2026-03-08.lowBoundary()`` is ``2026-03-08T00:00:00.000-05:00`` and ``.highBoundary()`` is
      ``2026-03-08T23:59:59.999-04:00``).  Where the change makes the local time occur twice or not at
      all, the low boundary takes the offset before the change and the high boundary the offset after
      it, so that the two enclose every instant of the local period.
    """
    components = _BOUNDARY_COMPONENTS.get(17 if precision is None else precision)
    if components is None:
        return None
    written = value.fields
    fields = list(written[:components])
    while len(fields) < min(components, 6):
        filled = len(fields)
        if filled == 1:
            fields.append(12 if high else 1)
        elif filled == 2:
            fields.append(calendar.monthrange(fields[0], fields[1])[1] if high else 1)
        elif filled == 3:
            fields.append(23 if high else 0)
        else:
            fields.append(59 if high else 0)
    text = _fields_text(fields, min(components, 6))
    if components > 6:
        digits = (value.fraction or "")[:3] if len(written) == 6 else ""
        text += "." + (digits.ljust(3, "0") if digits else "999" if high else "000")
    if components > 3:
        if value.zone is not None:
            text += value.zone
        else:
            text += _offset_text(_local_offset(zone, tuple(fields), 1 if high else 0))
    return text


_INTERVAL_UNIT_NAMES = ("year", "month", "week", "day", "hour", "minute", "second", "millisecond")
#: duration()/difference() precision argument -> unit: the specification's singular names, and plurals.
_INTERVAL_UNITS = {**{u: u for u in _INTERVAL_UNIT_NAMES}, **{u + "s": u for u in _INTERVAL_UNIT_NAMES}}
_INTERVAL_LENGTH = {
    "hour": timedelta(hours=1),
    "minute": timedelta(minutes=1),
    "second": timedelta(seconds=1),
    "millisecond": timedelta(milliseconds=1),
}


def _microseconds(value: _DateTime) -> int:
    """The fraction of a second written, in microseconds (0 when the value stops above seconds)."""
    if len(value.fields) < 6 or not value.fraction:
        return 0
    return int(value.fraction[:6].ljust(6, "0"))


def _instant(value: _DateTime, zone: tzinfo) -> datetime:
    """The UTC instant a date/time with a time part starts at (no offset written: local time in the zone)."""
    padded = list(value.fields) + [0] * (6 - len(value.fields))
    written = datetime(*padded, _microseconds(value), tzinfo=UTC)
    return written - timedelta(minutes=_assumed_offset(value, zone))


def _wall(value: _DateTime, zone: tzinfo, precision: int) -> datetime:
    """The value as a naive local date/time in the zone, cut to ``precision`` components (the rest at their start).

    A value written with an offset is converted to the zone's local time; one without is local time already.
    """
    if value.offset is not None:
        local = _instant(value, zone).astimezone(zone)
        fields: tuple[int, ...] = (local.year, local.month, local.day, local.hour, local.minute, local.second)
        micro = local.microsecond
    else:
        fields, micro = value.fields, _microseconds(value)
    kept = list(fields[:precision])
    padded = kept + [1] * (3 - min(len(kept), 3)) + [0] * (6 - max(len(kept), 3))
    return datetime(*padded, micro if precision >= 6 else 0)


def _local_floor(instant: datetime, unit: str, zone: tzinfo) -> datetime:
    """The UTC instant at which the local hour/minute/second/millisecond (in the zone) holding the instant starts."""
    local = instant.astimezone(zone)
    if unit == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    elif unit == "minute":
        local = local.replace(second=0, microsecond=0)
    elif unit == "second":
        local = local.replace(microsecond=0)
    else:
        local = local.replace(microsecond=local.microsecond // 1000 * 1000)
    return local.astimezone(UTC)


def _add_months(moment: datetime, months: int) -> datetime:
    """moment + months, the day clamped to the end of a shorter month (Jan 31 + 1 month = Feb 28), as ``+`` does."""
    year, month = divmod(moment.year * 12 + moment.month - 1 + months, 12)
    return moment.replace(year=year, month=month + 1, day=min(moment.day, calendar.monthrange(year, month + 1)[1]))


def _whole_periods(start: datetime, end: datetime, unit: str) -> int:
    """Whole calendar years/months/weeks/days from start to end (naive local times, start <= end)."""
    if unit in ("day", "week"):
        days = (end - start).days
        return days if unit == "day" else days // 7
    months = (end.year - start.year) * 12 + end.month - start.month
    if _add_months(start, months) > end:
        months -= 1
    return months if unit == "month" else months // 12


def _week_start(moment: datetime) -> date:
    """The Sunday that starts the week of a date (FHIRPath difference() counts weeks from Sunday)."""
    day = moment.date()
    return day - timedelta(days=(day.weekday() + 1) % 7)


def _boundaries_crossed(start: datetime, end: datetime, unit: str) -> int:
    """Calendar year/month/week/day boundaries crossed from start to end (naive local times; negative backwards)."""
    if unit == "day":
        return (end.date() - start.date()).days
    if unit == "week":
        return (_week_start(end) - _week_start(start)).days // 7
    months = (end.year - start.year) * 12 + end.month - start.month
    return months if unit == "month" else end.year - start.year


def _interval(start: _DateTime, end: _DateTime, precision: str, zone: tzinfo, whole: bool) -> int | None:
    """``start.duration(end, precision)`` (whole True) or ``start.difference(end, precision)``; None is empty.

    FHIRPath 3.0 (STU), "Date and Time Interval Functions": duration() is the number of whole periods of
    the precision from the input to the argument, difference() the number of period boundaries crossed
    (weeks start on Sunday); both are negative when the input is after the argument.  ``precision`` is
    one of 'year', 'month', 'week', 'day', 'hour', 'minute', 'second', 'millisecond' (the plural forms
    are accepted too); anything else is an error.  When the input or the argument is less precise than
    the precision asks (a date for 'hour'), the result is empty: ``onset.lowBoundary()`` makes a date-only
    onset a dateTime first.

    How values are compared (the specification asks to normalize offsets for hours and below and leaves
    the rest open):

    - hour, minute, second, millisecond: both values are instants (a value without an offset is local
      time in the evaluation's zone), so differing offsets and daylight saving changes give the true
      elapsed time: 2026-03-07T00:00-05:00 to 2026-03-09T00:00-04:00 is 47 hours.  duration() is the
      elapsed time divided by the unit, the remainder dropped; difference() counts the starts of local
      hours (minutes ...) of the evaluation's zone passed.
    - day, week, month, year: calendar periods of local time in the evaluation's zone (values with an
      offset are converted to it), so a day is a calendar day, 23 or 25 hours long across a daylight
      saving change.  When one value has no time part, both are compared by date (or month, or year:
      the lower of the two precisions).  duration() counts whole periods, the time of day included
      (months and years with end-of-month clamping, as ``+`` adds them).
    """
    unit = _INTERVAL_UNITS.get(precision) if isinstance(precision, str) else None
    if unit is None:
        raise ValueError(
            f"the precision of duration()/difference() is one of {', '.join(repr(u) for u in _INTERVAL_UNIT_NAMES)}, "
            f"got {precision!r}"
        )
    needed = _UNIT_PRECISION[unit]
    if start.precision < needed or end.precision < needed:
        return None
    if needed >= 4:
        a, b = _instant(start, zone), _instant(end, zone)
        length = _INTERVAL_LENGTH[unit]
        if whole:
            count = abs(b - a) // length
            return count if b >= a else -count
        return round((_local_floor(b, unit, zone) - _local_floor(a, unit, zone)) / length)
    common = min(start.precision, end.precision)
    a, b = _wall(start, zone, common), _wall(end, zone, common)
    if not whole:
        return _boundaries_crossed(a, b, unit)
    return _whole_periods(a, b, unit) if a <= b else -_whole_periods(b, a, unit)


_CALENDAR_TO_UCUM = {
    "year": "a",
    "month": "mo",
    "week": "wk",
    "day": "d",
    "hour": "h",
    "minute": "min",
    "second": "s",
    "millisecond": "ms",
}


def _number(value: Decimal) -> int | float:
    """A Decimal as JSON number: int if integral, else float."""
    return int(value) if value == value.to_integral_value() else float(value)


def _datetime_text(text: str) -> str:
    """FHIR form of a FHIRPath dateTime text: a time part is padded to seconds."""
    parsed = _parse_datetime(text)
    if parsed is None or parsed.precision not in (4, 5):
        return text
    date_part, _, rest = text.partition("T")
    time_part = rest[: len(rest) - len(parsed.zone or "")]
    time_part += ":00" * (3 - len(time_part.split(":")))
    return f"{date_part}T{time_part}{parsed.zone or ''}"


def _valid_datetime_text(text: str) -> bool:
    """True if the text is a date/dateTime on the calendar (the check of an @-literal at compile time)."""
    return _parse_datetime(text) is not None


# ---------------------------------------------------------------- times of day

_TIME_RE = re.compile(r"^T?(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?(Z|[+-]\d{2}(?::\d{2})?)?$")


class _TimeOfDay(NamedTuple):
    """A parsed FHIRPath Time: hour, minute, second as written (precision 1 to 3), the fraction of a second, and
    the UTC offset in minutes when one is written (times with an offset are an extension fhirpath.js and
    fhirpath-py read: they compare in UTC with another time with an offset)."""

    fields: tuple[int, ...]
    fraction: str | None
    offset: int | None = None
    zone: str | None = None

    def keys(self, to_utc: bool = False) -> tuple:
        """Components compared by precision, seconds and their fraction as one decimal; optionally in UTC."""
        keys: list = list(self.fields)
        if to_utc and self.offset:
            minutes = (keys[0] * 60 + (keys[1] if len(keys) > 1 else 0) - self.offset) % 1440
            keys[0] = minutes // 60
            if len(keys) > 1:
                keys[1] = minutes % 60
        if len(keys) == 3 and self.fraction:
            keys[2] = Decimal(f"{keys[2]}.{self.fraction}")
        return tuple(keys)


@lru_cache(maxsize=1024)
def _parse_time(text: str) -> _TimeOfDay | None:
    """Parse a time of day (``10:30``, ``T10:30:00.5``, ``T10:30-05:00``), or return None if it is not one
    (hour 0-23, minutes and seconds 0-59)."""
    match = _TIME_RE.match(text)
    if match is None:
        return None
    hour, minute, second, fraction, zone = match.groups()
    fields = tuple(int(v) for v in (hour, minute, second) if v is not None)
    if fields[0] > 23 or any(v > 59 for v in fields[1:]):
        return None
    offset = None
    if zone is not None:
        offset = 0 if zone == "Z" else int(zone[0] + "1") * (int(zone[1:3]) * 60 + int(zone[4:6] or 0))
    return _TimeOfDay(fields, fraction, offset, zone)


def _compare_times(x: _TimeOfDay, y: _TimeOfDay) -> int | None:
    """-1/0/1 comparing two times of day, or None when equal up to the lower of two different precisions
    (in UTC when both have an offset)."""
    to_utc = x.offset is not None and y.offset is not None
    for vx, vy in zip(x.keys(to_utc), y.keys(to_utc)):
        if vx != vy:
            return -1 if vx < vy else 1
    return 0 if len(x.fields) == len(y.fields) else None


def _shifted_time_text(value: _TimeOfDay, quantity: Any, sign: int) -> str:
    """The text of a time of day + sign * quantity (hours ... milliseconds), around the clock, at the value's precision."""
    unit = _UNIT_TO_CALENDAR.get(quantity.unit)
    if unit is None or _UNIT_PRECISION[unit] < 4:
        raise ValueError(f"time-of-day arithmetic needs hours, minutes, seconds or milliseconds, got {quantity}")
    precision = len(value.fields) + 3
    amount = Decimal(str(quantity.value)) * sign
    if _UNIT_PRECISION[unit] > precision and precision < 6:
        amount = amount * _UNIT_SECONDS[unit] / _UNIT_SECONDS[_PRECISION_UNIT[precision]]
        unit = _PRECISION_UNIT[precision]
    if _UNIT_PRECISION[unit] < 6:
        amount = amount.to_integral_value(rounding=ROUND_DOWN)
    fields = value.fields
    micro = int((value.fraction or "0")[:6].ljust(6, "0"))
    start = (fields[0] * 3600 + (fields[1] if len(fields) > 1 else 0) * 60 + (fields[2] if len(fields) > 2 else 0)) * 1_000_000 + micro
    total = (start + int(amount * _UNIT_SECONDS[unit] * 1_000_000)) % (86400 * 1_000_000)
    seconds, micro = divmod(total, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = ":".join(f"{v:02d}" for v in (hour, minute, second)[: len(fields)])
    if len(fields) == 3 and (value.fraction is not None or micro):
        digits = min(max(len(value.fraction or ""), 3), 6)
        text += "." + f"{micro:06d}"[:digits]
    return text + (value.zone or "")
