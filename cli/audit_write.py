"""What an audit writes once every image is done: ``summary.json``, ``report.html`` and, with pyarrow,
``results.parquet``, all read back from ``results.jsonl`` one row at a time."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .audit_pipeline import AuditItem, AuditSettings, decode_mask
from .audit_report import overlay_png, render_report, worst_rows
from .audit_stats import collect_metrics, read_rows, summarise, summary_as_json
from .inputs import read_image


def write_outputs(out: Path, items: list[AuditItem], settings: AuditSettings, *, seed: int = 0,
                  n_boot: int = 2000, worst: int = 12) -> dict[str, Any]:
    """Summarise the rows of this run's images, write the files, and return the summary (as JSON)."""
    by_name = {item.name: item for item in items}
    results = out / "results.jsonl"

    def rows() -> Iterator[dict[str, Any]]:
        return (row for row in read_rows(results) if row["image"] in by_name)

    summary = summarise(collect_metrics(rows()), seed=seed, n_boot=n_boot)
    as_json = summary_as_json(summary)
    (out / "summary.json").write_text(json.dumps(as_json, indent=2) + "\n", encoding="utf-8")
    worst_list, outside = worst_rows(rows(), worst)
    pictures = [(row, _overlay(out, by_name[row["image"]])) for row in worst_list]
    title = [f"model {settings.model}", f"method {settings.method} (sign {settings.sign}), target {settings.target}",
             f"{len(by_name)} images in {len(summary['groups'])} group(s)"]
    page = render_report(title, summary, pictures, outside, len(by_name))
    (out / "report.html").write_text(page, encoding="utf-8")
    _write_parquet(results, out / "results.parquet")
    return as_json


def _overlay(out: Path, item: AuditItem) -> str:
    image_bytes = item.image.read_bytes()
    display = read_image(io.BytesIO(image_bytes), None, None)  # type: ignore[arg-type]
    hw = display.shape[:2]
    saliency = np.load(out / "maps" / f"{item.name}.npy").astype(np.float32)
    region = decode_mask(item.mask.read_bytes(), hw, f"the mask of image {item.name}")
    forbidden = None if item.forbidden is None else \
        decode_mask(item.forbidden.read_bytes(), hw, f"the forbidden mask of image {item.name}")
    return overlay_png(display, saliency, region, forbidden)


def _write_parquet(results: Path, target: Path) -> None:
    try:
        import pyarrow.json as arrow_json
        import pyarrow.parquet as parquet
    except ImportError:
        return  # the JSONL is the result; Parquet is a convenience where pyarrow is installed
    parquet.write_table(arrow_json.read_json(results), target)
