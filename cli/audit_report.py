"""The audit's ``report.html``: one self-contained page (inline SVG plots, PNG overlays as data URIs).

Sections: per metric, each group's histogram and mean with its bootstrap interval; the gap between each
pair of groups with its interval; the images whose saliency falls most outside the region (lowest mass
accuracy first), drawn as overlays with the region outlined in green and the forbidden mask in red.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .audit_pipeline import METRICS
from .audit_stats import GroupMetric, Interval

TITLES = {
    "mass_accuracy": "Relevance mass accuracy (share of saliency in the region)",
    "rank_accuracy": "Relevance rank accuracy (share of the top-|M| pixels in the region)",
    "pointing_game": "Pointing game (the maximum lies in the region)",
    "energy_pointing_game": "Energy-based pointing game (share of saliency in the region's box)",
    "forbidden_share": "Forbidden share (share of saliency on the forbidden mask; high is bad)",
}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
REGION_RGB = (0, 200, 0)
FORBIDDEN_RGB = (230, 0, 0)


def worst_rows(rows: Iterable[dict[str, Any]], count: int) -> tuple[list[dict[str, Any]], int]:
    """The ``count`` rows of lowest mass accuracy (ascending) and how many rows have it below 0.5."""
    heap: list[tuple[float, int, dict[str, Any]]] = []
    outside = 0
    for index, row in enumerate(rows):
        value = row.get("mass_accuracy")
        if value is None:
            continue
        outside += value < 0.5
        entry = (-float(value), -index, row)  # a max-heap on the value keeps the lowest ones
        if len(heap) < count:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    return [row for _, _, row in sorted(heap, reverse=True)], outside


def overlay_png(display: np.ndarray, saliency: np.ndarray, region: np.ndarray, forbidden: np.ndarray | None) -> str:
    """The map over the image with the masks outlined, as a base64 PNG."""
    from ..core import visualize

    picture = np.asarray(visualize.overlay(display, saliency.astype(np.float32))).copy()
    factor = picture.shape[0] // region.shape[0]
    for mask, colour in ((region, REGION_RGB), (forbidden, FORBIDDEN_RGB)):
        if mask is not None:
            enlarged = np.kron(mask, np.ones((factor, factor), dtype=bool)).astype(bool)
            picture[_outline(enlarged)] = colour  # a one-pixel line at display size hides little of the map
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def histogram_svg(per_group: dict[str, GroupMetric], width: int = 360, height: int = 120) -> str:
    """Each group's histogram on [0, 1] as outlined steps, one colour per group, in one SVG."""
    bins = max(len(m.histogram) for m in per_group.values()) or 1
    tallest = max((max(m.histogram) / max(sum(m.histogram), 1) for m in per_group.values() if m.histogram),
                  default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18}" '
             f'font-family="sans-serif" font-size="10">',
             f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>',
             f'<text x="0" y="{height + 14}">0</text><text x="{width - 8}" y="{height + 14}">1</text>']
    for k, (_group, metric) in enumerate(per_group.items()):
        total = max(sum(metric.histogram), 1)
        points = []
        for i, count in enumerate(metric.histogram):
            top = height - (count / total) / tallest * (height - 4)
            points += [f"{i * width / bins:.1f},{top:.1f}", f"{(i + 1) * width / bins:.1f},{top:.1f}"]
        parts.append(f'<polyline fill="none" stroke-width="2" stroke="{COLOURS[k % len(COLOURS)]}" '
                     f'points="{width * 0:.1f},{height} {" ".join(points)} {width:.1f},{height}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _interval(interval: Interval) -> str:
    if math.isnan(interval.estimate):
        return "-"
    return f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _metric_section(metric: str, summary: dict[str, Any]) -> str:
    per_group = {g: metrics[metric] for g, metrics in summary["groups"].items()}
    if all(m.n == m.n_missing for m in per_group.values()):
        return ""
    rows = "".join(
        f'<tr><td><span style="color:{COLOURS[k % len(COLOURS)]}">&#9632;</span> {html.escape(g)}</td>'
        f"<td>{m.n - m.n_missing}</td><td>{m.n_missing}</td><td>{_interval(m.mean)}</td></tr>"
        for k, (g, m) in enumerate(per_group.items()))
    gaps = "".join(
        f"<tr><td>{html.escape(pair)}</td><td>{_interval(gap)}</td>"
        f"<td>{'yes' if gap.excludes_zero() else 'no'}</td></tr>"
        for pair, gap in summary["gaps"][metric].items())
    gap_table = (f"<table><tr><th>gap (mean difference)</th><th>{summary['level']:.0%} CI</th>"
                 f"<th>CI excludes 0</th></tr>{gaps}</table>") if gaps else ""
    return (f"<h3>{html.escape(TITLES[metric])}</h3><div class='row'>{histogram_svg(per_group)}"
            f"<table><tr><th>group</th><th>n</th><th>missing</th><th>mean [{summary['level']:.0%} CI]</th></tr>"
            f"{rows}</table>{gap_table}</div>")


def _worst_section(worst: list[tuple[dict[str, Any], str]], outside: int, total: int) -> str:
    cells = "".join(
        f"<figure><img src='data:image/png;base64,{png}' alt='{html.escape(row['image'])}'>"
        f"<figcaption>{html.escape(row['image'])} ({html.escape(str(row['group']))})<br>"
        f"mass {row['mass_accuracy']:.2f}, rank {row['rank_accuracy']:.2f}, predicted {row['predicted']}"
        f"</figcaption></figure>"
        for row, png in worst)
    return (f"<h2>Worst cases</h2><p>{outside} of {total} images have less than half their saliency in the "
            f"region. Lowest mass accuracy first (region in green, forbidden mask in red):</p>"
            f"<div class='grid'>{cells}</div>")


def render_report(title_lines: list[str], summary: dict[str, Any], worst: list[tuple[dict[str, Any], str]],
                  outside: int, total: int) -> str:
    """The whole page as a string."""
    header = "".join(f"<p>{html.escape(line)}</p>" for line in title_lines)
    metrics = "".join(_metric_section(metric, summary) for metric in METRICS)
    note = (f"<p>Means with {summary['level']:.0%} percentile-bootstrap intervals ({summary['n_boot']} resamples, "
            f"seed {summary['seed']}); 'missing': an all-zero map or no forbidden mask.</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:0 1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}.row{display:flex;"
             "align-items:flex-start;flex-wrap:wrap}.grid{display:flex;flex-wrap:wrap}figure{margin:6px;"
             "font-size:12px;width:260px}img{max-width:256px;image-rendering:pixelated}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>gradsal audit</title><style>{style}"
            f"</style></head><body><h1>gradsal audit</h1>{header}<h2>Metrics by group</h2>{note}{metrics}"
            f"{_worst_section(worst, outside, total)}</body></html>\n")
