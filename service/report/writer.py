"""The feedback report as files: the HTML page (charts inlined as SVG images) and the same figures as CSV.

The page is one self-contained document: its stylesheet is an inline ``<style>`` whose SHA-256 the service's
Content-Security-Policy names, and each chart an ``<img>`` with a ``data:`` URI, so the page loads nothing from
anywhere and runs no script. The CSV files hold exactly the figures of the page's tables.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from protocol.engine.content import Content
from service.report.charts import draw_charts
from service.report.figures import Figures, Outcomes

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE = "report/report.html"
#: The CSV files, each with what it holds.
CSV_FILES = {
    "recommendations.csv": "cards per recommendation and safety rule, by outcome",
    "override-reasons.csv": "overrides per recommendation or rule and reason",
    "weeks.csv": "cards per ISO week of issue, by outcome",
    "cards.csv": "cards per PlanDefinition action, by outcome",
}
_environment = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]), keep_trailing_newline=True)


def share(outcomes: Outcomes) -> str:
    """The share accepted as a whole percentage, or a dash when no card was issued."""
    return "–" if outcomes.acceptance is None else f"{outcomes.acceptance:.0%}"


def _ratio(outcomes: Outcomes) -> str:
    """The share accepted for a CSV cell: a fraction with four decimals, empty when no card was issued."""
    return "" if outcomes.acceptance is None else f"{outcomes.acceptance:.4f}"


def data_uri(svg: str) -> str:
    """An SVG document as a ``data:`` URI for an ``<img>``."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def svg_size(svg: str) -> tuple[int, int]:
    """The CSS pixel width and height of an SVG document whose root gives them in points (as matplotlib writes them)."""
    found = re.search(r'<svg[^>]*\swidth="([\d.]+)pt"[^>]*\sheight="([\d.]+)pt"', svg)
    if not found:
        return 864, 432
    return round(float(found.group(1)) * 4 / 3), round(float(found.group(2)) * 4 / 3)


def protocols_of(content: Content) -> list[Content]:
    """The protocols of the content, the default one first (one, unless several folders are served side by side)."""
    return list(getattr(content, "protocols", None) or [content])


def render_html(figures: Figures, content: Content, charts: dict[str, str], csv_href: Callable[[str], str]) -> str:
    """The report page for these figures and charts (SVG text by name); ``csv_href`` gives the link to each CSV file."""
    return _environment.get_template(TEMPLATE).render(
        figures=figures, protocols=[(part.publication.get("title", ""), part.publication.get("version", "")) for part in protocols_of(content)],
        charts={name: data_uri(svg) for name, svg in charts.items()}, sizes={name: svg_size(svg) for name, svg in charts.items()},
        share=share, csv_files=CSV_FILES, csv_href=csv_href)


def style_hashes(html: str) -> list[str]:
    """The CSP source of each inline ``<style>`` of a page (``'sha256-…'``)."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode('utf-8')).digest()).decode('ascii')}'"
            for body in re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)]


def _csv(header: list[str], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _counts(outcomes: Outcomes) -> list[object]:
    return [outcomes.issued, outcomes.accepted, outcomes.overridden, outcomes.ignored, _ratio(outcomes)]


COUNT_COLUMNS = ["issued", "accepted", "overridden", "ignored", "share_accepted"]


def csv_tables(figures: Figures) -> dict[str, str]:
    """Each CSV file of CSV_FILES, as text."""
    return {
        "recommendations.csv": _csv(["code", "name", *COUNT_COLUMNS], [[t.code, t.name, *_counts(t.outcomes)] for t in figures.topics]),
        "override-reasons.csv": _csv(["code", "name", "reason_system", "reason_code", "reason", "overridden"],
                                     [[r.topic, figures.topic_name(r.topic), r.system or "", r.code or "", r.display, r.count]
                                      for r in figures.reasons]),
        "weeks.csv": _csv(["week", "monday", *COUNT_COLUMNS], [[w.week, w.monday.isoformat(), *_counts(w.outcomes)] for w in figures.weeks]),
        "cards.csv": _csv(["action_id", "plan", "title", "code", *COUNT_COLUMNS],
                          [[a.action_id, a.plan, a.title, a.topic, *_counts(a.outcomes)] for a in figures.actions]),
    }


def write_report(out: Path, figures: Figures, content: Content) -> list[Path]:
    """Write ``index.html``, the CSV files and each chart's SVG into the folder ``out`` (which must exist); the files written."""
    charts = draw_charts(figures)
    written = []
    page = out / "index.html"
    page.write_text(render_html(figures, content, charts, csv_href=lambda name: name), encoding="utf-8")
    written.append(page)
    for name, text in csv_tables(figures).items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="")
        written.append(path)
    for name, svg in charts.items():
        path = out / f"{name}.svg"
        path.write_text(svg, encoding="utf-8")
        written.append(path)
    return written
