"""Text from the record cannot change what a card shows: HTML, markdown headings, links and images in a drug's name
come out as literal text in the markdown detail, and summaries and labels stay one plain line."""

from __future__ import annotations

import re

import pytest

from service.cds_hooks.cards import markdown_text, plain_line
from tests.patients import CYCLOBENZAPRINE_10, PHENELZINE, RXNORM, Patient
from tests.service_helpers import cards_of, hook_body, make_app

INJECTIONS = {
    "html": '<img src=x onerror="alert(1)">Phenelzine',
    "markdown heading": "# Take 10 tablets now\nPhenelzine",
    "javascript link": "[Phenelzine](javascript:alert(1))",
    "image": "![x](https://evil.example/pixel.png) Phenelzine",
    "list and rule": "1. Phenelzine\n---\n- more",
    "emphasis and code": "**Phenelzine** `code` ~~gone~~ | table |",
}


def _patient(name: str) -> Patient:
    p = Patient(45)
    p.spasm(20)
    drug = p.medication(PHENELZINE, kind="statement")
    drug["medicationCodeableConcept"]["text"] = name
    return p


def _rendered_markup(markdown: str) -> list[str]:
    """What markdown would render as markup rather than text: HTML tags, links/images, headings, list items."""
    unescaped = re.sub(r"\\.", "", markdown)
    found = re.findall(r"<[A-Za-z/!]", unescaped) + re.findall(r"\]\(", unescaped)
    found += [line for line in unescaped.splitlines() if re.match(r"\s*(#{1,6}\s|\d+[.)]\s|[-+*]\s(?!\*\*)|---|===)", line)
              and not line.lstrip().startswith("- **")]
    return found


@pytest.mark.parametrize("case", sorted(INJECTIONS))
@pytest.mark.parametrize("hook", ["patient-view", "order-sign"])
def test_a_drug_name_from_the_record_cannot_inject_markup(tmp_path, case, hook):
    app = make_app(tmp_path)
    p = _patient(INJECTIONS[case])
    drafts = [] if hook == "patient-view" else [p.draft_medication(CYCLOBENZAPRINE_10)]
    cards = cards_of(app.test_client(), hook, hook_body(app, hook, p, drafts))
    assert cards
    mentioned = False
    for card in cards:
        assert "\n" not in card["summary"] and "<" not in card["summary"] and ">" not in card["summary"]
        detail = card.get("detail", "")
        assert _rendered_markup(detail) == [], (case, detail)
        assert "javascript:" not in detail or "\\](javascript:" in detail
        mentioned = mentioned or "Phenelzine" in detail
        for suggestion in card.get("suggestions", []):
            assert "\n" not in suggestion["label"] and "<" not in suggestion["label"]
    if hook == "order-sign":
        assert mentioned, "the MAO inhibitor card still names the drug, as text"


def test_plain_drug_names_read_as_they_were_written(tmp_path):
    app = make_app(tmp_path)
    p = _patient("Phenelzine 15 MG Oral Tablet")
    cards = cards_of(app.test_client(), "order-sign", hook_body(app, "order-sign", p, [p.draft_medication(CYCLOBENZAPRINE_10)]))
    assert any("Phenelzine 15 MG Oral Tablet" in c.get("detail", "") for c in cards)


@pytest.mark.parametrize("text, shown", [
    ("<b>x</b>", "&lt;b&gt;x&lt;/b&gt;"), ("# h", "\\# h"), ("[a](b)", "\\[a\\](b)"), ("a_b*c", "a\\_b\\*c"),
    ("1. one", "1\\. one"), ("- item", "\\- item"), ("line\nbreak", "line break"), ("A & B", "A &amp; B"),
    ("Onset 2026-11-24 (day 14).", "Onset 2026-11-24 (day 14)."),
])
def test_markdown_text_shows_plain_text_literally(text, shown):
    assert markdown_text(text) == shown


def test_plain_line_is_one_line_without_angle_brackets():
    assert plain_line("a\n<script>b\tc\u0000d</script>") == "a scriptb c d/script"
    assert plain_line(f"{RXNORM} x") == f"{RXNORM} x"
