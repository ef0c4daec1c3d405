"""The feedback report's charts, drawn with matplotlib (Agg, no display) as SVG documents.

Three charts: cards per recommendation and safety rule split by outcome, overrides per reason for each of them, and
cards per ISO week of issue split by outcome with the share accepted. Each bar carries an SVG id naming its series and
category (``accepted-S1``, ``reason-record-incorrect-S8``, ``week-accepted-2026-W49``), so a reader or a test can tell
them apart. Text stays text (``svg.fonttype: none``) and the output has no date and fixed ids, so one set of figures
always gives the same bytes.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402 - after the backend is chosen
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from service.report.figures import Figures, OverrideReason, Topic  # noqa: E402

#: Outcome colours (Okabe-Ito, told apart by colour-blind readers too) in the order the bars are stacked.
OUTCOME_COLOURS = {"accepted": "#009E73", "overridden": "#E69F00", "ignored": "#8C8C8C"}
#: Colours of the override reasons, in order of first appearance.
REASON_COLOURS = ("#0072B2", "#D55E00", "#CC79A7", "#56B4E9", "#009E73", "#E69F00", "#000000", "#F0E442")
NO_REASON_COLOUR = "#BDBDBD"  #: overrides sent without a reason
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "back-spasm-cds-report", "font.family": "DejaVu Sans", "font.size": 10,
         "axes.spines.top": False, "axes.spines.right": False}
WIDTH = 9.0  #: inches, at 72 points per inch in SVG


def _svg(figure: Figure) -> str:
    """The figure as an SVG document, without a creation date."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buffer.getvalue()


def _gid(*parts: str) -> str:
    """An SVG id from its parts (letters, digits, dots and dashes only)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", "-".join(parts))


def _label(topic: Topic) -> str:
    name = topic.name if len(topic.name) <= 48 else topic.name[:47] + "…"
    return f"{topic.code}: {name}" if name != topic.code else topic.code


def outcomes_chart(figures: Figures) -> str | None:
    """Horizontal stacked bars: per recommendation or rule with cards, how many were accepted, overridden, ignored."""
    topics = [t for t in figures.topics if t.outcomes.issued]
    if not topics:
        return None
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, 1.2 + 0.38 * len(topics)))
        axes = figure.add_subplot()
        positions = list(range(len(topics)))[::-1]
        left = [0] * len(topics)
        for series, colour in OUTCOME_COLOURS.items():
            values = [getattr(t.outcomes, series) for t in topics]
            bars = axes.barh(positions, values, left=left, color=colour, label=series, height=0.7)
            for bar, topic in zip(bars, topics):
                bar.set_gid(_gid(series, topic.code))
            left = [a + b for a, b in zip(left, values)]
        axes.set_yticks(positions, [_label(t) for t in topics])
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("cards issued")
        axes.legend(loc="lower right", frameon=False, ncols=3, bbox_to_anchor=(1, 1))
        return _svg(figure)


def reasons_chart(figures: Figures) -> str | None:
    """Horizontal stacked bars: per recommendation or rule with overrides, how many cards were overridden for each reason."""
    reasons: Sequence[OverrideReason] = figures.reasons
    if not reasons:
        return None
    topics = list(dict.fromkeys(r.topic for r in reasons))
    kinds = list(dict.fromkeys((r.code, r.display) for r in reasons))
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, 1.6 + 0.38 * len(topics)))
        axes = figure.add_subplot()
        positions = list(range(len(topics)))[::-1]
        left = [0] * len(topics)
        colours = iter(REASON_COLOURS * len(kinds))
        for code, display in kinds:
            values = [sum(r.count for r in reasons if r.topic == t and r.code == code) for t in topics]
            drawn = [i for i, value in enumerate(values) if value]  # a bar only where the reason was given
            bars = axes.barh([positions[i] for i in drawn], [values[i] for i in drawn], left=[left[i] for i in drawn],
                             color=next(colours) if code else NO_REASON_COLOUR, label=display, height=0.7)
            for bar, i in zip(bars, drawn):
                bar.set_gid(_gid("reason", code or "none", topics[i]))
            left = [a + b for a, b in zip(left, values)]
        axes.set_yticks(positions, [f"{t}: {figures.topic_name(t)}"[:56] for t in topics])
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("cards overridden")
        axes.legend(loc="lower left", frameon=False, ncols=2, bbox_to_anchor=(0, 1))
        return _svg(figure)


def weekly_chart(figures: Figures) -> str | None:
    """Stacked columns per ISO week of issue (accepted, overridden, ignored) and a line of the share accepted."""
    weeks = figures.weeks
    if not weeks:
        return None
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, 4.2))
        axes = figure.add_subplot()
        positions = list(range(len(weeks)))
        bottom = [0] * len(weeks)
        for series, colour in OUTCOME_COLOURS.items():
            values = [getattr(w.outcomes, series) for w in weeks]
            bars = axes.bar(positions, values, bottom=bottom, color=colour, label=series, width=0.6)
            for bar, week in zip(bars, weeks):
                bar.set_gid(_gid("week", series, week.week))
            bottom = [a + b for a, b in zip(bottom, values)]
        axes.set_xticks(positions, [f"{w.week}\n{w.monday:%d %b}" for w in weeks])
        axes.set_xlim(-0.6, max(len(weeks), 6) - 0.4)  # a few weeks do not make columns as wide as the chart
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("cards issued")
        share = axes.twinx()
        share.spines["top"].set_visible(False)
        rates = [w.outcomes.acceptance for w in weeks]
        line, = share.plot([p for p, r in zip(positions, rates) if r is not None], [r for r in rates if r is not None],
                           color="#0072B2", marker="o", label="share accepted")
        line.set_gid("acceptance-share")
        share.set_ylim(0, 1.05)
        share.yaxis.set_major_formatter(PercentFormatter(1.0))
        share.set_ylabel("share of cards accepted")
        handles = axes.get_legend_handles_labels()[0] + [line]
        axes.legend(handles=handles, loc="lower left", frameon=False, ncols=4, bbox_to_anchor=(0, 1))
        return _svg(figure)


#: Each chart: its file name, its title, and the function that draws it.
CHARTS = {
    "outcomes-by-recommendation": ("Cards per recommendation and safety rule, by outcome", outcomes_chart),
    "override-reasons": ("Overrides per reason", reasons_chart),
    "outcomes-by-week": ("Cards per week of issue, by outcome, and the share accepted", weekly_chart),
}


#: matplotlib's rc_context changes process-wide settings: one drawing at a time, so two requests cannot mix styles.
_DRAWING = threading.Lock()


def draw_charts(figures: Figures) -> dict[str, str]:
    """Every chart that has something to show, as SVG text by file name (without ``.svg``)."""
    with _DRAWING:
        drawn = {name: draw(figures) for name, (_, draw) in CHARTS.items()}
    return {name: svg for name, svg in drawn.items() if svg is not None}
