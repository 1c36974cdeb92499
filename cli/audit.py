"""The ``audit`` command: saliency localisation over a data set, per image and per group, with a report.

For every image (matched to its mask by file name) it writes one JSON line to ``OUT/results.jsonl``
(the prediction and the localisation metrics) and the map to ``OUT/maps/NAME.npy`` as soon as the image
is done; a second run with the same settings skips the images already in ``results.jsonl``. Only the
image in hand and a few numbers per image are held in memory. At the end ``OUT/summary.json`` (group
means, bootstrap intervals, gaps) and ``OUT/report.html`` are written, plus ``OUT/results.parquet`` when
pyarrow is installed. ``--engine ray`` runs the same per-image work on Ray Data (the ``scale`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.methods import cli_names
from . import messages

RESULTS = "results.jsonl"
SETTINGS = "audit.json"
NOT_IN_RESULTS = ("max_pixels",)  # settings a restart may change: they refuse images, never alter a row


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gradsal audit`` beyond the model, inputs and preprocessing ones."""
    parser.add_argument("--masks", required=True, help="folder of region masks (object, lesion), one per image, "
                        "matched by file name (NAME.png or NAME.npy; non-zero = in the region)")
    parser.add_argument("--forbidden", help="folder of masks the model should ignore (markers, rulers)")
    parser.add_argument("--groups", help="CSV table with a header row: an image column and a group column")
    parser.add_argument("--group-column", help="the groups table's column holding each image's group")
    parser.add_argument("--image-column", default="image", help="the groups table's column of image file names "
                        "(default: image)")
    parser.add_argument("--method", choices=cli_names(), default="vanilla")
    parser.add_argument("--sign", choices=["abs", "positive"], default="abs",
                        help="which attributions count as saliency: their size (abs, default) or positive ones")
    parser.add_argument("--target", default="top1", help="top1 (default), a class INDEX, or a NAME from --labels")
    parser.add_argument("--labels", help="class names: a text file (one per line) or a JSON list")
    parser.add_argument("--layer", help="Grad-CAM layer: ONNX tensor name or torch module name")
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad samples (default 50)")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise level (default 0.15)")
    parser.add_argument("--steps", type=int, default=50, help="integrated-gradients steps (default 50)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local (default) or ray (Ray Data; pip install 'gradsal[scale]')")
    parser.add_argument("--workers", type=int, default=1, help="Ray actors, one backend each (default 1)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--worst", type=int, default=12, help="worst cases drawn in the report (default 12)")
    parser.add_argument("--out", default="gradsal-audit", help="output folder (default: gradsal-audit)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or messages")


def settings_from(args: argparse.Namespace, preprocessing: Any = None) -> Any:
    """The command line as :class:`AuditSettings`; ``preprocessing``: the one :func:`.commands.open_model`
    resolved from the model and the flags, as ``explain`` resolves it, so that every worker feeds images alike."""
    from .audit_pipeline import AuditSettings
    from .inputs import read_labels

    labels = read_labels(args.labels)
    return AuditSettings(
        model=str(Path(args.model).resolve()), method=args.method, target=args.target,
        labels=tuple(labels) if labels else None, output_name=args.output_name, layer=args.layer,
        samples=args.samples, noise=args.noise, steps=args.steps, seed=args.seed, sign=args.sign,
        input_name=args.input_name, constant_inputs=_constant_input_specs(args.constant_input),
        model_class=args.model_class, output_batch_axis=args.output_batch_axis,
        straight_through=args.straight_through, preprocessing=preprocessing,
        max_pixels=args.max_pixels,
    )


def _constant_input_specs(specs: list[str] | None) -> tuple[str, ...]:
    """``NAME=FILE.npy`` with FILE made absolute: workers may run in another folder."""
    resolved = []
    for spec in specs or []:
        name, _, file = spec.partition("=")
        resolved.append(f"{name}={Path(file).resolve()}")
    return tuple(resolved)


def run_audit(args: argparse.Namespace) -> int:
    """Audit every image, streaming results to ``--out``, then write the summary and the report."""
    from .audit_pipeline import plan_audit, read_groups
    from .commands import attribution_function, open_model
    from .messages import note
    from .preprocess import NORMALISATION_HINT

    if args.workers < 1 or args.bootstrap < 1 or args.worst < 0:
        raise InputError("--workers and --bootstrap must be at least 1, --worst at least 0")
    if bool(args.groups) != bool(args.group_column):
        raise InputError("--groups TABLE.csv and --group-column COL go together")
    groups = read_groups(args.groups, args.group_column, args.image_column) if args.groups else None
    items = plan_audit(args.inputs, args.masks, args.forbidden, groups)
    attribution_function(settings_from(args).method_arguments())  # a missing --layer fails before loading
    model = open_model(args, quiet=args.quiet)  # the layout, preset, file and flags, resolved as explain does
    if not model.preprocessing.normalised:
        note(NORMALISATION_HINT, quiet=args.quiet)
    settings = settings_from(args, model.preprocessing)
    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    _check_same_settings(out, settings)
    done = completed_images(out / RESULTS)
    todo = [item for item in items if item.name not in done]
    if not args.quiet and done:
        print(f"{len(items) - len(todo)} of {len(items)} images already in {out / RESULTS}; auditing the rest")
    _write_rows(out, _engine(args, settings, todo), len(todo), args.quiet)
    from .audit_write import write_outputs

    write_outputs(out, items, settings, seed=args.seed, n_boot=args.bootstrap, worst=args.worst)
    if not args.quiet:
        print(f"wrote {out / RESULTS}, {out / 'summary.json'} and {out / 'report.html'}")
    return 0


def _engine(args: argparse.Namespace, settings: Any, todo: list[Any]) -> Iterator[tuple[dict[str, Any], bytes]]:
    if not todo:
        return iter(())
    if args.engine == "ray":
        from ..scale import audit_with_ray  # says which extra to install when Ray is missing

        return audit_with_ray(settings, todo, workers=args.workers)
    from .audit_pipeline import audit_locally

    return audit_locally(settings, todo)


def _write_rows(out: Path, rows: Iterator[tuple[dict[str, Any], bytes]], total: int, quiet: bool) -> None:
    bar = _progress(total, quiet)
    with open(out / RESULTS, "a", encoding="utf-8") as results:
        for row, saliency in rows:
            (out / "maps" / f"{row['image']}.npy").write_bytes(saliency)
            results.write(row_to_json(row) + "\n")
            results.flush()  # a row on disk is a row a restart skips
            messages.flush()  # the first results are in: the notes on what was decided are worth reading now
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


def row_to_json(row: dict[str, Any]) -> str:
    """One result row as strict JSON (NaN as null)."""
    return json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})


def completed_images(path: Path) -> set[str]:
    """Images already in a results file; a last line cut short by a kill is removed."""
    if not path.exists():
        return set()
    done: set[str] = set()
    good_bytes = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                done.add(json.loads(line)["image"])
            except (ValueError, KeyError):
                break
            good_bytes += len(line)
    if good_bytes < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return done


def _check_same_settings(out: Path, settings: Any) -> None:
    record = out / SETTINGS
    current = json.loads(json.dumps(asdict(settings)))
    if record.exists() and (out / RESULTS).exists():
        previous = json.loads(record.read_text(encoding="utf-8"))
        changed = _changed(previous, current)
        if changed:
            raise InputError(f"{out} holds results computed with other settings ({', '.join(changed)}): "
                             "choose another --out, or delete its results.jsonl to start again")
    record.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")


def _changed(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings that differ, a nested one by its field (``preprocessing.mean``)."""
    changed = []
    for key in sorted(current.keys() | previous.keys()):
        old, new = previous.get(key), current.get(key)
        if key in NOT_IN_RESULTS or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            fields = sorted(old.keys() | new.keys())
            changed += [f"{key}.{field}" for field in fields if old.get(field) != new.get(field)]
        else:
            changed.append(key)
    return changed


def _progress(total: int, quiet: bool) -> Any:
    if quiet or total == 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="gradsal audit", file=sys.stderr, unit="image")
