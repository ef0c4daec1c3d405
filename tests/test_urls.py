"""FHIR server base URLs in one normal form, and links kept below the base."""

from __future__ import annotations

import pytest

from service.urls import BadBaseUrl, below, fhir_base


@pytest.mark.parametrize("url, normal", [
    ("https://EHR.example.org:443/fhir/", "https://ehr.example.org/fhir"),
    ("https://ehr.example.org/fhir/../admin", "https://ehr.example.org/admin"),
    ("https://ehr.example.org/fhir/%2e%2E/admin", "https://ehr.example.org/admin"),
    ("https://ehr.example.org/a/./b//c", "https://ehr.example.org/a/b/c"),
    ("https://ehr.example.org/f%68ir", "https://ehr.example.org/fhir"),
    ("http://[::1]:8080/fhir", "http://[::1]:8080/fhir"),
    ("http://127.0.0.1:80/r4", "http://127.0.0.1/r4"),
    ("https://ehr.example.org/../../..", "https://ehr.example.org"),
    ("https://ehr.example.org/fhir/a%20b", "https://ehr.example.org/fhir/a%20b"),
])
def test_base_urls_are_brought_to_one_form(url, normal):
    assert fhir_base(url) == normal


@pytest.mark.parametrize("url, reason", [
    ("https://ehr.example.org/fhir?x=1", "query"), ("https://ehr.example.org/fhir?", "query"), ("https://ehr.example.org/fhir#x", "fragment"),
    ("https://user:pw@ehr.example.org/fhir", "user information"), ("http://127.0.0.1@evil.example/fhir", "user information"),
    ("file:///etc/passwd", "http(s)"), ("ftp://ehr.example.org/fhir", "http(s)"), ("https:///fhir", "host"),
    ("https://ehr.example.org:99999/fhir", "not a valid URL"), ("http://[::1/fhir", "not a valid URL"),
])
def test_what_is_not_a_plain_base_url_is_refused_with_the_reason(url, reason):
    with pytest.raises(BadBaseUrl, match=reason.replace("(", r"\(").replace(")", r"\)")):
        fhir_base(url)


@pytest.mark.parametrize("link, inside", [
    ("https://ehr.example.org/fhir/Condition?patient=1&page=2", True), ("https://ehr.example.org/fhir", True),
    ("https://ehr.example.org/admin?x=1", False), ("https://ehr.example.org/fhir/../admin/x", False),
    ("https://ehr.example.org/fhir/%2e%2e/admin", False), ("https://ehr.example.org/fhirx/Condition", False),
    ("http://ehr.example.org/fhir/Condition", False), ("https://ehr.example.org:8443/fhir/Condition", False),
    ("https://evil.example/fhir/Condition", False), ("not a url", False),
])
def test_links_are_followed_only_below_the_base(link, inside):
    assert below(link, "https://ehr.example.org/fhir") is inside
