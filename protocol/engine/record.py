"""The patient's data for one request, indexed once: by type, by reference, and by code for each retrieve.

Input is plain JSON as a CDS client sends it: resources, searchset or collection Bundles (possibly with
OperationOutcome entries and `next` links), ``None`` for "no data", nested in any mix. Nothing here parses
with pydantic: the hot path stays on dicts.

Only the subject's data is indexed (PROTOCOL.md §1, "Only this patient's data"): when the record is built for a
subject, a resource whose ``subject`` or ``patient`` names another patient, and any other Patient, is left out
before any rule can see it (neither by type nor by reference), and only counted (``ignored``).

A caller may bound the size of a record (``max_resources``): more resources than that, counted after Bundles are
flattened (every entry, other patients' and OperationOutcomes included; contained resources are part of their
container), is a RecordTooLarge before anything is indexed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from protocol.engine.terminology import Terminology, codes_of, concept_in, index_codes, split_canonical


class RecordTooLarge(ValueError):
    """The data holds more resources than the record may (``count`` of them, ``limit`` allowed)."""

    def __init__(self, count: int, limit: int):
        super().__init__(f"{count} resources, more than the {limit} allowed")
        self.count = count
        self.limit = limit


class Record:
    """Resources of one patient, deduplicated by ``Type/id``, with the lookups the engine needs.

    With a ``subject`` (``Patient/id`` or the id), other patients' resources are left out and counted in
    ``ignored`` (each distinct ``Type/id`` once); without one, everything supplied is kept.
    """

    def __init__(self, resources: Iterable[Mapping[str, Any]], terminology: Terminology, now: datetime | None = None,
                 subject: str | None = None, max_resources: int | None = None):
        self.terminology = terminology
        self.now = now
        self.by_type: dict[str, list[Mapping[str, Any]]] = {}
        self.outcomes: list[Mapping[str, Any]] = []
        self._by_ref: dict[str, Mapping[str, Any]] = {}
        self._container: dict[int, Mapping[str, Any]] = {}
        self._retrieved: dict[int, tuple[Mapping[str, Any], list[Mapping[str, Any]]]] = {}
        self._codes: dict[tuple[int, str], tuple[Mapping[str, Any], frozenset]] = {}
        self._ignored: set[str] = set()
        self._ignored_anonymous = 0
        items = list(_flatten(resources))
        if max_resources is not None and len(items) > max_resources:
            raise RecordTooLarge(len(items), max_resources)
        scope = SubjectScope(subject, patient_full_urls(items)) if subject else None
        for resource, full_url in items:
            if scope is not None and scope.excludes(resource):
                self._ignore(resource)
            else:
                self._add(resource, full_url)

    @classmethod
    def from_data(cls, data: Any, terminology: Terminology, now: datetime | None = None, subject: str | None = None,
                  max_resources: int | None = None) -> "Record":
        """Build from any mix of resources, Bundles, lists and CDS Hooks prefetch mappings; with a subject,
        other patients' resources are left out; more than ``max_resources`` resources is a RecordTooLarge."""
        return cls(_as_items(data), terminology, now, subject, max_resources)

    @property
    def ignored(self) -> int:
        """How many resources of other patients were left out (counted once per ``Type/id``)."""
        return len(self._ignored) + self._ignored_anonymous

    def _ignore(self, resource: Mapping[str, Any]) -> None:
        rid = resource.get("id")
        if isinstance(rid, str):
            self._ignored.add(f"{resource.get('resourceType')}/{rid}")
        else:
            self._ignored_anonymous += 1

    def _add(self, resource: Mapping[str, Any], full_url: str | None) -> None:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return
        if rtype == "OperationOutcome":
            self.outcomes.append(resource)
            return
        if isinstance(resource.get("contained"), list):  # every copy: each one's "#id" resolves in its own contained list
            _index_local_references(resource, resource, self._container)
        rid = resource.get("id")
        key = f"{rtype}/{rid}" if isinstance(rid, str) else None
        if key is not None and key in self._by_ref:
            return
        self.by_type.setdefault(rtype, []).append(resource)
        if key is not None:
            self._by_ref[key] = resource
        if full_url:
            self._by_ref.setdefault(full_url, resource)

    # -- lookups -----------------------------------------------------------------------------------
    def of_type(self, resource_type: str) -> list[Mapping[str, Any]]:
        """Every resource of one type."""
        return self.by_type.get(resource_type, [])

    def get(self, reference: str) -> Mapping[str, Any] | None:
        """The resource a reference string names: ``Type/id``, an absolute URL ending in it, or a fullUrl."""
        found = self._by_ref.get(reference)
        if found is not None:
            return found
        parts = reference.split("/_history/")[0].rstrip("/").split("/")
        return self._by_ref.get("/".join(parts[-2:])) if len(parts) >= 2 else None

    def resolve(self, reference: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The resource a Reference points to; ``#id`` is looked up in the resource that holds the reference."""
        if not isinstance(reference, Mapping):
            return None
        ref = reference.get("reference")
        if not isinstance(ref, str):
            return None
        if ref.startswith("#"):
            container = self._container.get(id(reference))
            if container is None:
                return None
            return next((c for c in container.get("contained") or [] if isinstance(c, Mapping) and c.get("id") == ref[1:]), None)
        return self.get(ref)

    def patient(self, subject: str | None = None) -> Mapping[str, Any] | None:
        """The subject Patient: the one named (``Patient/id`` or id), else the only Patient supplied."""
        if subject:
            return self.get(subject if "/" in subject else f"Patient/{subject}")
        patients = self.of_type("Patient")
        return patients[0] if len(patients) == 1 else None

    # -- retrieve ----------------------------------------------------------------------------------
    def retrieve(self, requirement: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """Resources that meet a DataRequirement: its type, every codeFilter (ValueSet or codes) and every dateFilter."""
        key = id(requirement)  # the entry keeps the requirement alive, so its id cannot be reused while cached
        cached = self._retrieved.get(key)
        if cached is not None:
            return cached[1]
        rtype = requirement.get("type", "")
        filters = requirement.get("codeFilter") or []
        dates = requirement.get("dateFilter") or []
        candidates = self.of_type(rtype)
        for code_filter in filters:
            if not candidates:
                break
            candidates = self._filter(rtype, code_filter, candidates)
        for date_filter in dates:
            window = self._window(date_filter)
            if window is not None:
                path = (date_filter.get("path") or "").split(".")
                zone = self.now.tzinfo if self.now is not None else timezone.utc
                candidates = [r for r in candidates if any(_overlaps(_span(v, zone), window) for v in _values_at(r, path))]
        self._retrieved[key] = (requirement, candidates)
        return candidates

    def _window(self, date_filter: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
        """The time window a dateFilter asks for: a dateTime, a Period, or a Duration back from now (UTC instants).

        Dates, and times without an offset, are read in the time zone of the record's clock (``now.tzinfo``: the
        engine gives the clock in its local time zone), in UTC when there is no clock.
        """
        zone = self.now.tzinfo if self.now is not None else timezone.utc
        if "valueDuration" in date_filter and self.now is not None:
            delta = _duration(date_filter["valueDuration"])
            now = self.now.astimezone(timezone.utc)  # elapsed time, not wall-clock time across a daylight saving change
            return (now - delta, now) if delta is not None else None
        if "valuePeriod" in date_filter:
            start = _span(date_filter["valuePeriod"].get("start"), zone)
            end = _span(date_filter["valuePeriod"].get("end"), zone)
            return (start[0] if start else datetime.min.replace(tzinfo=timezone.utc),
                    end[1] if end else datetime.max.replace(tzinfo=timezone.utc))
        if "valueDateTime" in date_filter:
            return _span(date_filter["valueDateTime"], zone)
        return None

    def _filter(self, rtype: str, code_filter: Mapping[str, Any], candidates: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The candidates with a code at the filter's path in its ValueSet or among its listed codes."""
        wanted: dict[str, frozenset[str]] = {}
        if code_filter.get("valueSet"):
            url = split_canonical(code_filter["valueSet"])[0]
            wanted = self.terminology.code_index(url) if url in self.terminology else {}
        listed = code_filter.get("code") or []
        if listed:
            pairs = {(coding.get("system"), coding.get("code")) for coding in listed if isinstance(coding, dict)}
            wanted = index_codes({(s, c) for s, c in pairs if isinstance(s, str) and isinstance(c, str)}
                                 | {(s, c) for c, systems in wanted.items() for s in systems})
        if not wanted:
            return []
        path = code_filter.get("path") or "code"
        return [r for r in candidates if self._has_code(r, path, wanted)]

    def _has_code(self, resource: Mapping[str, Any], path: str, wanted: Mapping[str, frozenset[str]]) -> bool:
        """Whether the element at path holds a wanted code: CodeableConcepts are read in place, anything else
        (a choice element, a Reference to a Medication, a dotted path) through its codes, worked out once."""
        value = resource.get(path)
        if type(value) is dict and "coding" in value:
            return concept_in(value, wanted)
        if type(value) is list and all(type(v) is dict and "coding" in v for v in value):
            for concept in value:
                if concept_in(concept, wanted):
                    return True
            return False
        key = (id(resource), path)
        codes = self._codes.get(key)
        if codes is None:
            codes = self._codes[key] = (resource, frozenset(self._codes_of_element(resource, path)))
        return any(code in wanted and system in wanted[code] for system, code in codes[1])

    def _codes_of_element(self, resource: Mapping[str, Any], path: str) -> set:
        """Codes at a simple path; a choice element is read under any type, and a Reference through its target's code."""
        direct = resource.get(path)
        if isinstance(direct, dict) and "coding" in direct:
            return codes_of(direct)
        found: set = set()
        for value in _values_at(resource, path.split(".")):
            if isinstance(value, Mapping) and "reference" in value and "coding" not in value:
                target = self.resolve(value)
                found |= codes_of(target.get("code")) if target else set()
            else:
                found |= codes_of(value)
        return found


# -- the subject's data only -----------------------------------------------------------------------------


def entries_of(data: Any) -> list[tuple[Mapping[str, Any], str | None]]:
    """Every resource in any mix of resources, Bundles, lists and prefetch mappings, with the fullUrl it came under."""
    return list(_flatten(_as_items(data)))


def patient_full_urls(items: Iterable[tuple[Mapping[str, Any], str | None]]) -> dict[str, str]:
    """fullUrl -> id of every Patient entry that has both, so a ``urn:uuid`` reference tells which patient it names."""
    return {full_url: resource["id"] for resource, full_url in items
            if full_url and resource.get("resourceType") == "Patient" and isinstance(resource.get("id"), str)}


def _reference_id(reference: str) -> str:
    """The id in a reference or subject: ``Patient/x``, ``Patient/x/_history/2``, an absolute URL, or a bare id."""
    return reference.split("/_history/")[0].rstrip("/").rsplit("/", 1)[-1]


class SubjectScope:
    """Tells whether a resource belongs to another patient than the subject.

    A ``subject`` or ``patient`` reference names another patient when it is ``Patient/<other>`` (relative,
    absolute or with ``_history``) or the fullUrl of a Patient entry with another id. A reference that cannot be
    told (an identifier only, an unknown ``urn:uuid``, a Group, a contained ``#id``) keeps the resource. Each
    distinct reference string is worked out once, so a resource costs a dict lookup or two.
    """

    def __init__(self, subject: str, full_urls: Mapping[str, str] | None = None):
        self.subject_id = _reference_id(subject)
        self._full_urls = full_urls or {}
        self._others: dict[str, bool] = {}

    def names_other_patient(self, reference: str) -> bool:
        """True when the reference string names a patient who is not the subject."""
        verdict = self._others.get(reference)
        if verdict is None:
            verdict = self._others[reference] = self._work_out(reference)
        return verdict

    def _work_out(self, reference: str) -> bool:
        patient_id = self._full_urls.get(reference)
        if patient_id is not None:
            return patient_id != self.subject_id
        if reference.startswith(("#", "urn:")):
            return False
        parts = reference.split("/_history/")[0].rstrip("/").split("/")
        return len(parts) >= 2 and parts[-2] == "Patient" and parts[-1] != self.subject_id

    def other_patient_reference(self, resource: Mapping[str, Any]) -> str | None:
        """The ``subject`` (else ``patient``) reference of the resource if it names another patient."""
        holder = resource.get("subject")
        if holder is None:
            holder = resource.get("patient")
        reference = holder.get("reference") if type(holder) is dict else None
        return reference if type(reference) is str and self.names_other_patient(reference) else None

    def excludes(self, resource: Mapping[str, Any]) -> bool:
        """True for another patient's resource, and for a Patient that is not the subject.

        Called once per resource of the record: a known reference costs one lookup in the verdict cache.
        """
        holder = resource.get("subject")
        if holder is None:
            holder = resource.get("patient")
            if holder is None:
                if resource.get("resourceType") != "Patient":
                    return False
                rid = resource.get("id")
                return type(rid) is str and rid != self.subject_id
        if type(holder) is not dict:
            return False
        reference = holder.get("reference")
        if type(reference) is not str:
            return False
        verdict = self._others.get(reference)
        return self.names_other_patient(reference) if verdict is None else verdict


# -- helpers -------------------------------------------------------------------------------------------


def _as_items(data: Any) -> Iterable[Any]:
    if data is None:
        return []
    if isinstance(data, Mapping) and "resourceType" not in data:
        return list(data.values())
    if isinstance(data, list):
        return data
    return [data]


def _flatten(items: Iterable[Any], full_url: str | None = None) -> Iterable[tuple[Mapping[str, Any], str | None]]:
    """Resources out of Bundles, lists and prefetch mappings, with the fullUrl they came under."""
    for item in items:
        if item is None:
            continue
        if isinstance(item, list):
            yield from _flatten(item)
        elif isinstance(item, dict):
            if item.get("resourceType") == "Bundle":
                entries = item.get("entry")
                for entry in entries if isinstance(entries, list) else []:
                    resource = entry.get("resource") if isinstance(entry, dict) else None
                    if isinstance(resource, dict):
                        entry_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
                        if resource.get("resourceType") == "Bundle":
                            yield from _flatten([resource], entry_url)
                        else:
                            yield resource, entry_url
            elif "resourceType" in item:
                yield item, full_url
            else:
                yield from _flatten(list(item.values()))


def _values_at(value: Any, steps: list[str]) -> Iterable[Any]:
    """Values of a dotted path in JSON; lists are flattened and choice elements (name + Type) are followed."""
    if not steps:
        if isinstance(value, list):
            yield from value
        else:
            yield value
        return
    if isinstance(value, list):
        for item in value:
            yield from _values_at(item, steps)
        return
    if not isinstance(value, Mapping):
        return
    name = steps[0]
    if name in value:
        yield from _values_at(value[name], steps[1:])
        return
    for key, item in value.items():
        if key.startswith(name) and key[len(name):][:1].isupper():
            yield from _values_at(item, steps[1:])


_UNITS = {"a": 365 * 24, "mo": 30 * 24, "wk": 7 * 24, "d": 24, "h": 1, "min": 1 / 60, "s": 1 / 3600}


def _duration(quantity: Mapping[str, Any]) -> timedelta | None:
    hours = _UNITS.get(quantity.get("code") or quantity.get("unit"))
    return timedelta(hours=float(quantity["value"]) * hours) if hours is not None and "value" in quantity else None


def _span(value: Any, zone: tzinfo = timezone.utc) -> tuple[datetime, datetime] | None:
    """The interval a FHIR date, dateTime, instant or Period covers, as UTC instants.

    A date (a month, a year) covers its whole days in ``zone``: from the start of its first day to the end of
    its last, so a day is 23 or 25 hours long across a daylight saving change; a time without an offset is
    local time in ``zone``.
    """
    if isinstance(value, Mapping):
        start, end = _span(value.get("start"), zone), _span(value.get("end"), zone)
        if start is None and end is None:
            return None
        return (start[0] if start else datetime.min.replace(tzinfo=timezone.utc),
                end[1] if end else datetime.max.replace(tzinfo=timezone.utc))
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            start = datetime(int(value), 1, 1)
            following = start.replace(year=start.year + 1)
        elif len(value) == 7:
            start = datetime(int(value[:4]), int(value[5:7]), 1)
            following = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
        elif len(value) == 10:
            start = datetime.fromisoformat(value)
            following = start + timedelta(days=1)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            moment = moment.astimezone(timezone.utc)
            return moment, moment
        return (start.replace(tzinfo=zone).astimezone(timezone.utc),
                following.replace(tzinfo=zone).astimezone(timezone.utc) - timedelta(microseconds=1))
    except (ValueError, OverflowError):
        return None


def _overlaps(span: tuple[datetime, datetime] | None, window: tuple[datetime, datetime]) -> bool:
    return span is not None and span[0] <= window[1] and span[1] >= window[0]


def _index_local_references(value: Any, container: Mapping[str, Any], index: dict[int, Mapping[str, Any]]) -> None:
    """Remember which resource holds each ``#id`` reference, so contained resources resolve."""
    if isinstance(value, Mapping):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("#"):
            index[id(value)] = container
        for key, item in value.items():
            if key != "contained":
                _index_local_references(item, container, index)
        contained = value.get("contained") if value is container else None
        for inner in contained if isinstance(contained, list) else []:
            _index_local_references(inner, container, index)
    elif isinstance(value, list):
        for item in value:
            _index_local_references(item, container, index)
