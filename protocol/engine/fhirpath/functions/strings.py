"""String manipulation (FHIRPath 5.6, and split(), join(), trim(), encode(), decode() of 3.0 STU)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from protocol.engine.fhirpath.functions.base import (
    Entry,
    _fn_nullable,
    _fn_simple,
    arities,
)
from protocol.engine.fhirpath.runtime import (
    Compiling,
    _data,
    _Run,
    _single_string,
    _State,
    _string_argument,
)

# -- strings


def _substring(data: list, start: Any, length: Any = None) -> list:
    text = _single_string(data)
    if start is None:
        return []
    start = int(start)
    if start < 0 or start >= len(text):
        return []
    if length is None:
        return [text[start:]]
    return [text[start: start + int(length)]]


def _index_of(data: list, part: Any) -> list:
    text = _single_string(data)
    if part is None:
        raise ValueError("indexOf() needs a string")
    return [text.find(part)]


def _starts_with(data: list, prefix: Any) -> list:
    if prefix is None:
        return []
    text = _single_string(data)
    return [bool(text) and text.startswith(prefix)]


def _ends_with(data: list, suffix: Any) -> list:
    if suffix is None:
        return []
    text = _single_string(data)
    return [bool(text) and text.endswith(suffix)]


def _contains_text(data: list, part: Any) -> list:
    text = _single_string(data)
    if part is None:
        raise ValueError("contains() needs a string")
    return [part in text]


def _replace(data: list, pattern: Any, substitution: Any) -> list:
    text = _single_string(data)
    if pattern == "" and substitution is not None:
        return [substitution + substitution.join(text) + substitution]
    if not text or not pattern:
        return []
    if substitution is None:
        raise ValueError("replace() needs a substitution")
    return [text.replace(pattern, substitution)]


def _matches(data: list, pattern: Any) -> list:
    if not pattern:
        return []
    text = _single_string(data)
    return [re.search(re.compile(pattern, re.DOTALL), text) is not None]


def _replace_matches(data: list, pattern: Any, substitution: Any) -> list:
    text = _single_string(data)
    if pattern is None or substitution is None:
        return []
    return [re.sub(re.compile(pattern), re.sub(r"\$(\d+)", r"\\\1", substitution), text)]


def _length(data: list) -> list:
    return [len(_single_string(data))]


def _split(data: list, separator: Any) -> list:
    text = _single_string(data)
    if separator is None:
        raise ValueError("split() needs a string")
    return text.split(separator)


def _trim(data: list) -> list:
    return [_single_string(data).strip()]


def _upper(data: list) -> list:
    return [_single_string(data).upper()]


def _lower(data: list) -> list:
    return [_single_string(data).lower()]


def _to_chars(data: list) -> list:
    if not data:
        return []
    return list(_single_string(data))


def _fn_join(compiler: Compiling, params: list) -> _Run:
    separator = compiler.value(params[0]) if params else None

    def join(data: list, st: _State) -> list:
        if not data:
            return []
        sep = _string_argument(separator(st)) if separator is not None else ""
        if sep is None:
            raise ValueError("join() needs a string")
        texts = []
        for item in data:
            value = _data(item)
            if not isinstance(value, str):
                raise TypeError("Join requires a collection of strings.")
            texts.append(value)
        return [sep.join(texts)]

    return join


def _encode(data: list, encoding: Any) -> list:
    """encode('hex' | 'base64' | 'urlbase64'): the input string's UTF-8 bytes so written."""
    if encoding is None:
        return []
    raw = _single_string(data).encode("utf-8")
    if encoding == "hex":
        return [raw.hex()]
    if encoding == "base64":
        return [base64.b64encode(raw).decode("ascii")]
    if encoding == "urlbase64":
        return [base64.urlsafe_b64encode(raw).decode("ascii")]
    raise ValueError(f"encode() takes 'hex', 'base64' or 'urlbase64', got {encoding!r}")


def _decode(data: list, encoding: Any) -> list:
    """decode('hex' | 'base64' | 'urlbase64'): the string whose UTF-8 bytes the input writes so."""
    if encoding is None:
        return []
    text = _single_string(data)
    try:
        if encoding == "hex":
            raw = bytes.fromhex(text)
        elif encoding == "base64":
            raw = base64.b64decode(text, validate=True)
        elif encoding == "urlbase64":
            raw = base64.urlsafe_b64decode(text)
        else:
            raise ValueError(f"decode() takes 'hex', 'base64' or 'urlbase64', got {encoding!r}")
        return [raw.decode("utf-8")]
    except (binascii.Error, UnicodeDecodeError):
        return []


FUNCTIONS: dict[str, Entry] = {
    "indexOf": (_fn_nullable(_index_of, "String"), arities(1)),
    "substring": (_fn_nullable(_substring, "Integer", "Integer"), arities(1, 2)),
    "startsWith": (_fn_nullable(_starts_with, "String"), arities(1)),
    "endsWith": (_fn_nullable(_ends_with, "String"), arities(1)),
    "contains": (_fn_nullable(_contains_text, "String"), arities(1)),
    "upper": (_fn_nullable(_upper), arities(0)),
    "lower": (_fn_nullable(_lower), arities(0)),
    "replace": (_fn_nullable(_replace, "String", "String"), arities(2)),
    "matches": (_fn_nullable(_matches, "String"), arities(1)),
    "replaceMatches": (_fn_nullable(_replace_matches, "String", "String"), arities(2)),
    "length": (_fn_nullable(_length), arities(0)),
    "toChars": (_fn_simple(_to_chars), arities(0)),
    "split": (_fn_nullable(_split, "String"), arities(1)),
    "join": (_fn_join, arities(0, 1)),
    "trim": (_fn_nullable(_trim), arities(0)),
    "encode": (_fn_nullable(_encode, "String"), arities(1)),
    "decode": (_fn_nullable(_decode, "String"), arities(1)),
}
