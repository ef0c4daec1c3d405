"""FHIR server base URLs as the service compares and uses them: one normal form, and what lies below a base.

A ``fhirServer`` is a base URL: http(s), a host, a path; no user info, query or fragment. Its path is brought to one
form before it is matched against a client's allow-list or used: percent-encoding decoded where it stands for an
unreserved character and written in one way elsewhere, dot segments (``.`` and ``..``, encoded or not) resolved. So
``https://ehr.example.org/fhir/../admin`` is ``https://ehr.example.org/admin``, which an allow-list entry for
``/fhir`` does not cover. Links the server sends (next pages) are followed only when they stay below the base.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit, urlunsplit

#: Characters a path segment keeps as they are (RFC 3986 unreserved and sub-delims, ':' and '@').
SEGMENT_SAFE = "-._~!$&'()*+,;=:@"


class BadBaseUrl(ValueError):
    """A fhirServer that is not a plain http(s) base URL; the message says why (and never quotes it)."""


def fhir_base(url: str) -> str:
    """The normal form of a FHIR server base URL (no trailing slash); BadBaseUrl if it is not a plain base URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadBaseUrl("fhirServer is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadBaseUrl("fhirServer must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise BadBaseUrl("fhirServer must not hold user information")
    if parts.query or url.rstrip().endswith("?"):
        raise BadBaseUrl("fhirServer must be a base URL without a query")
    if parts.fragment or "#" in url:
        raise BadBaseUrl("fhirServer must be a base URL without a fragment")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port is None or port == default else f"{host}:{port}"
    return urlunsplit((scheme, netloc, normal_path(parts.path).rstrip("/"), "", ""))


def normal_path(path: str) -> str:
    """A URL path with its segments percent-decoded and re-encoded one way, its dot segments resolved and empty
    segments dropped."""
    segments: list[str] = []
    for raw in path.split("/"):
        segment = unquote(raw)
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(quote(segment, safe=SEGMENT_SAFE))
    trailing = "/" if path.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing if segments else "/"


def below(url: str, base: str) -> bool:
    """Whether ``url`` (a link the FHIR server sent) is the base or below it once normalised: same scheme, host and
    port, and a path under the base's path."""
    try:
        parts = urlsplit(url)
        wanted = urlsplit(fhir_base(urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))))
    except (BadBaseUrl, ValueError):
        return False
    allowed = urlsplit(base)
    if (wanted.scheme, wanted.netloc) != (allowed.scheme, allowed.netloc):
        return False
    return wanted.path == allowed.path or wanted.path.startswith(allowed.path.rstrip("/") + "/")
