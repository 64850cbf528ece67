"""What every figure shares: matplotlib set-up, saving within the page width, colours and markers
that stay distinguishable past ten configurations, panel grids, and labels that do not overlap.

Figures are embedded in report.html at their natural size, so a figure's width in pixels is its
width on the page: MAX_WIDTH_IN × DPI = 1,100 px fits the page's 72rem (1,152 px) column, and a
figure that holds more (models, configurations, trainings) grows downwards in panels instead.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np

from analysis.document import Figure
from runner.storage import LocalStore

DPI = 110
MAX_WIDTH_IN = 10.0
"""Widest figure, in inches: 10 in × 110 dpi = 1,100 px, inside report.html's 1,152 px column."""

PAD_IN = 0.05
"""Margin around a figure's tight box, in inches."""

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend with the report's settings."""
    # Imported here: matplotlib takes ~1 s to import and only report writing needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Fixed ids in the SVG files, so reruns write identical bytes.
    plt.rcParams["svg.hashsalt"] = "qabench"
    plt.rcParams["font.size"] = 9
    return plt


def save(fig: Any, name: str, caption: str, target: LocalStore) -> Figure:
    """Write figures/<name>.png and .svg, no wider than MAX_WIDTH_IN; return the Figure record."""
    plt = pyplot()
    width = fig.get_size_inches()[0]
    if width > MAX_WIDTH_IN + 1e-9:
        plt.close(fig)
        raise ValueError(f"figure {name} is {width:.2f} in wide; the page holds {MAX_WIDTH_IN} in: lay it out in rows of panels")
    # Lay out and draw once, then freeze the layout: each savefig would otherwise rerun the layout
    # engine (seconds for a figure of 40 panels) and draw again to find the tight box.
    _freeze(fig)
    # A tight box trims margins; it may also grow past the figure when something sits outside it
    # (a legend anchored beside the axes), and then the figure's own box is kept instead.
    tight = fig.get_tightbbox(fig.canvas.get_renderer()).padded(PAD_IN)
    box = tight if tight.width <= MAX_WIDTH_IN else None
    for kind, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=DPI, bbox_inches=box, metadata=metadata)
        target.write_bytes(f"figures/{name}.{kind}", buffer.getvalue())
    plt.close(fig)
    return Figure(name, caption)


def _freeze(fig: Any) -> None:
    """Draw the figure with its layout engine once, then keep that layout (idempotent)."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    if isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        return
    fig.canvas.draw()
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine("none")


def colors(n: int) -> list[Any]:
    """n colours: tab10 up to 10, tab20 up to 20, then tab20 again (figures pair colour with a
    marker per method, so 20 colours × 12 markers tell 240 series apart)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def keyed(values: Sequence[str]) -> dict[str, int]:
    """value → its index among the distinct values, in first-seen order (stable across figures
    drawn from the same configurations)."""
    return {value: i for i, value in enumerate(dict.fromkeys(values))}


MIN_PANELS_WIDTH_IN = 5.5
"""Narrowest figure of panels: one or two panels keep a readable aspect instead of a full-width strip."""


def panel_grid(n: int, columns: int, panel_height: float, **kwargs: Any) -> tuple[Any, list[Any]]:
    """A figure of `n` panels in rows of at most `columns` (a full row spans the page width);
    unused cells hidden."""
    plt = pyplot()
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    width = max(MIN_PANELS_WIDTH_IN, MAX_WIDTH_IN * cols / columns)
    fig, axes = plt.subplots(rows, cols, figsize=(width, panel_height * rows), squeeze=False, layout="constrained", **kwargs)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def staircase(points: Sequence[tuple[float, float]], post: bool = True) -> list[tuple[float, float]]:
    """The vertices matplotlib draws for `drawstyle="steps-post"` (or "steps-pre") through points."""
    path: list[tuple[float, float]] = []
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        path += [(x0, y0), (x1, y0) if post else (x0, y1)]
    return path + list(points[-1:])


def _hits(box: Any, obstacles: np.ndarray) -> bool:
    """Whether a display-space box overlaps any row (x0, y0, x1, y1) of `obstacles`."""
    if len(obstacles) == 0:
        return False
    return bool(np.any((obstacles[:, 0] < box.x1) & (box.x0 < obstacles[:, 2]) & (obstacles[:, 1] < box.y1) & (box.y0 < obstacles[:, 3])))


def _line_boxes(ax: Any, lines: Sequence[Sequence[tuple[float, float]]]) -> np.ndarray:
    """Small boxes every 3 display pixels along each polyline (data coordinates), as obstacles."""
    boxes = []
    for line in lines:
        if len(line) < 2:
            continue
        pixels = ax.transData.transform(np.asarray(line, dtype=float))
        for (x0, y0), (x1, y1) in zip(pixels[:-1], pixels[1:]):
            steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / 3))
            for t in np.linspace(0, 1, steps + 1):
                x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                boxes.append((x - 1, y - 1, x + 1, y + 1))
    return np.array(boxes, dtype=float).reshape(-1, 4)


# Offsets in points tried for a label, nearest first: the four diagonals, then further out.
_OFFSETS = [(dx * r, dy * r) for r in (4, 12, 22, 34) for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.4), (0, -1.4), (1.4, 0), (-1.4, 0))]


def place_labels(
    ax: Any, points: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 7,
    avoid: Sequence[tuple[float, float]] = (), lines: Sequence[Sequence[tuple[float, float]]] = (),
) -> list[Any]:
    """Annotate each point with its text where it overlaps no label placed before it, no point
    (of `points` and `avoid`), no polyline of `lines` (data coordinates, as drawn) and stays
    inside the axes; a label moved away from its point gets a leader line.
    Call it last, once everything else of the figure is drawn (it fixes the layout).

    Greedy, nearest free spot first. When none of the tried spots is free (a crowd of points
    no room can hold) the label takes the first spot; the report keys points to its table,
    so a label is a convenience, never the only way to identify a point.
    """
    fig = ax.figure
    # Lay the figure out once and freeze it: a layout engine re-run at save time would move the
    # axes under labels placed for the old positions.
    _freeze(fig)
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    # Each marker as a 6-pixel box, so labels do not cover points.
    dots = ax.transData.transform(np.asarray([*points, *avoid], dtype=float).reshape(-1, 2))
    obstacles = np.vstack([np.column_stack([dots - 3, dots + 3]), _line_boxes(ax, lines)])
    placed = np.empty((0, 4))
    artists = []
    for (x, y), text in zip(points, texts):
        chosen = None
        for dx, dy in _OFFSETS:
            box = _extent(ax, renderer, x, y, text, dx, dy, fontsize)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not _hits(box, placed) and not _hits(box, obstacles):
                chosen = (dx, dy, box)
                break
        if chosen is None:
            chosen = (*_OFFSETS[0], _extent(ax, renderer, x, y, text, *_OFFSETS[0], fontsize))
        dx, dy, box = chosen
        far = abs(dx) > 5 or abs(dy) > 6
        # The leader line is added only now: measuring an annotation with an arrow clips the
        # arrow's path against the text box, ~10 times the cost of measuring the text alone.
        artists.append(ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=_ha(dx), va=_va(dy),
                                   arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5} if far else None))
        placed = np.vstack([placed, [box.x0, box.y0, box.x1, box.y1]])
    return artists


def _ha(dx: float) -> str:
    return "left" if dx > 0 else "right" if dx < 0 else "center"


def _va(dy: float) -> str:
    return "bottom" if dy > 0 else "top" if dy < 0 else "center"


def _extent(ax: Any, renderer: Any, x: float, y: float, text: str, dx: float, dy: float, fontsize: float) -> Any:
    """The display box a label at offset (dx, dy) points from (x, y) would cover."""
    label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=_ha(dx), va=_va(dy))
    box = label.get_window_extent(renderer)
    label.remove()
    return box
