"""A horizontal bar chart as inline SVG, drawn by the server (pure: no I/O).

The console shows which versions of a package the fleet runs without any JavaScript: one bar per
version, its width proportional to its device count. Every size is an SVG attribute (the page's
Content-Security-Policy forbids ``style=``), every piece of text is escaped here (versions come from
devices), and the picture carries ``role="img"``, a ``<title>`` and an ``aria-label`` that says in words
what it shows, so a screen reader gets the figures too.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["version_chart"]

WIDTH = 640  # the viewBox's width; the picture scales to its container
ROW = 26  # one bar's row height
BAR = 18  # a bar's height within its row
PAD = 8
CHAR = 7.2  # about one 12px character, to size the label column
MIN_LABEL = 48.0
LABEL_CHARS = 32  # a longer version is cut in its label (its tooltip and the aria-label say it whole)
COUNT_ROOM = 110.0  # right of the longest bar: "1234 · 100 %"


def _devices(n: int) -> str:
    return f"{n} device" + ("" if n == 1 else "s")


def _share(count: int, total: int) -> str:
    return f"{round(100 * count / total)} %" if total else "0 %"


def _summary(title: str, counts: Sequence[tuple[str, int]]) -> str:
    """The chart in words: its ``aria-label``."""
    if not counts:
        return f"{title}: no device runs it"
    return f"{title}: " + "; ".join(f"{version}: {_devices(n)}" for version, n in counts)


def _label(version: str) -> str:
    return version if len(version) <= LABEL_CHARS else version[: LABEL_CHARS - 1] + "…"


def _label_width(counts: Sequence[tuple[str, int]]) -> float:
    longest = max((len(_label(version)) for version, _ in counts), default=0)
    return max(MIN_LABEL, longest * CHAR + PAD)


_ROW = Markup(
    '<g class="row"><title>{name}: {devices}</title>'
    '<text x="{label_x:.1f}" y="{middle:.1f}" text-anchor="end" dominant-baseline="central">{label}</text>'
    '<rect class="bar" x="{left:.1f}" y="{top:.1f}" width="{width:.2f}" height="{bar}" rx="3"'
    ' data-version="{name}" data-count="{count}"></rect>'
    '<text class="count" x="{count_x:.1f}" y="{middle:.1f}" dominant-baseline="central">'
    "{count} · {share}</text></g>"
)
_EMPTY = Markup('<text x="{x}" y="{y:.1f}" dominant-baseline="central">No device runs it</text>')
_SVG = Markup(
    '<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}"'
    ' aria-label="{summary}"><title>{title}</title>{rows}</svg>'
)


def _bar(index: int, version: str, count: int, *, biggest: int, total: int, left: float) -> Markup:
    """One row: the version's label, its bar and its count, with a tooltip ``<title>``.

    ``Markup.format`` escapes every argument (``markupsafe.escape``): a version is device-supplied text.
    """
    span = WIDTH - left - COUNT_ROOM
    width = span * count / biggest if biggest else 0.0
    top = PAD + index * ROW
    return _ROW.format(
        name=escape(version),
        label=escape(_label(version)),
        devices=_devices(count),
        label_x=left - PAD,
        middle=top + BAR / 2,
        left=left,
        top=top,
        width=width,
        bar=BAR,
        count=count,
        count_x=left + width + PAD,
        share=_share(count, total),
    )


def version_chart(counts: list[tuple[str, int]], *, title: str) -> Markup:
    """An accessible SVG with one horizontal bar per ``(version, count)``, in the order given.

    Widths are proportional to the counts (the largest fills the bar area); with no versions, the
    picture says so in words.
    """
    biggest = max((n for _, n in counts), default=0)
    total = sum(n for _, n in counts)
    left = _label_width(counts)
    rows = [
        _bar(i, version, n, biggest=biggest, total=total, left=left) for i, (version, n) in enumerate(counts)
    ]
    if not rows:
        rows.append(_EMPTY.format(x=PAD, y=PAD + BAR / 2))
    return _SVG.format(
        width=WIDTH,
        height=2 * PAD + max(1, len(counts)) * ROW,
        summary=_summary(title, counts),
        title=title,
        rows=Markup("").join(rows),
    )
