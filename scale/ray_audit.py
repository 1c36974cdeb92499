"""The audit on Ray Data: ``ray.data`` reads the images, an actor pool (one backend per actor) explains them.

Each actor builds one :class:`~gradsal.cli.audit_pipeline.Auditor` and calls the same per-image
:meth:`~gradsal.cli.audit_pipeline.Auditor.audit` as the local engine, so the rows are the local
engine's to the bit; only their order differs. The settings carry the preprocessing already resolved
(preset, flags, ``MODEL.preprocess.json``, layout), so every actor feeds its images as the driver
decided. On a cluster of N machines with ``workers`` actors spread over them, N machines explain N times
the images (each image is independent). The model file, any ``--constant-input`` files and the mask files
must be readable at the same paths on every node (shared storage); the images are read by ``ray.data``
(any filesystem it supports).

A user's own dataset needs the columns ``name`` (str), ``image`` and ``mask`` (encoded file bytes:
PNG, JPEG, ...; a mask may also be ``.npy`` bytes), and optionally ``forbidden`` (bytes or None) and
``group`` (str). :func:`audit_dataset` returns a dataset with one row per image: ``image``, ``group``,
``predicted``, ``target``, ``score``, the metrics, ``map`` (``.npy`` bytes, float16 scaled to max 1)
and ``error`` (empty, or the message of the typed error that stopped that image).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..cli.audit_pipeline import METRICS, AuditItem, Auditor, AuditRecord, AuditSettings, encode_map
from ..core import errors
from ..core.errors import GradsalError, InputError, MissingDependencyError

try:
    import ray
    import ray.data
except ImportError as exc:
    raise MissingDependencyError("the Ray engine needs Ray Data: pip install 'gradsal[scale]'") from exc

ROW_COLUMNS = ("image", "group", "predicted", "target", "score", *METRICS)
INTEGER_COLUMNS = ("predicted", "target")
IO_CPUS = 0


class AuditActor:
    """A Ray actor's state: one backend, built once, used for every batch the actor receives."""

    def __init__(self, settings: AuditSettings) -> None:
        self.auditor = Auditor(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns: dict[str, list[Any]] = {name: [] for name in (*ROW_COLUMNS, "map", "error", "error_type")}
        for record in _records(batch):
            try:
                row, saliency = self.auditor.audit(record)
                encoded, error, kind = encode_map(saliency), "", ""
            except GradsalError as exc:
                row = {"image": record.name, "group": record.group, "predicted": -1, "target": -1}
                encoded, error, kind = b"", str(exc), type(exc).__name__
            for name in ROW_COLUMNS:
                columns[name].append(row.get(name, math.nan))
            columns["map"].append(encoded)
            columns["error"].append(error)
            columns["error_type"].append(kind)
        return {name: _column(name, values) for name, values in columns.items()}


def _records(batch: dict[str, np.ndarray]) -> Iterator[AuditRecord]:
    count = len(batch["name"])
    forbidden = batch.get("forbidden")
    groups = batch.get("group")
    for i in range(count):
        banned = None if forbidden is None or forbidden[i] is None else bytes(forbidden[i])
        group = "all" if groups is None else str(groups[i])
        yield AuditRecord(str(batch["name"][i]), bytes(batch["image"][i]), bytes(batch["mask"][i]), banned, group)


def _column(name: str, values: list[Any]) -> np.ndarray:
    if name in INTEGER_COLUMNS:
        return np.asarray(values, dtype=np.int64)
    if name in ("score", *METRICS):
        return np.asarray(values, dtype=np.float64)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def audit_dataset(dataset: Any, settings: AuditSettings, *, workers: int = 1, batch_size: int = 8) -> Any:
    """The audit of every row of ``dataset`` (a ``ray.data.Dataset``, columns above), lazily, as a dataset.

    ``workers`` actors (one CPU each) each hold one backend; ``batch_size`` images go to an actor at a time.
    """
    if not isinstance(settings, AuditSettings):
        raise errors.InputTypeError(f"settings must be an AuditSettings, got {type(settings).__name__}")
    if workers < 1 or batch_size < 1:
        raise InputError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    return dataset.map_batches(AuditActor, fn_constructor_kwargs={"settings": settings}, batch_size=batch_size,
                               batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)


def read_items(items: list[AuditItem]) -> Any:
    """A dataset of records: ``ray.data`` reads the image files, each task adds the masks and group."""
    masks = {item.name: (str(item.mask), None if item.forbidden is None else str(item.forbidden), item.group)
             for item in items}
    # reading asks for no CPU: an actor pool as large as the cluster would otherwise hold every CPU and
    # leave the reads, which feed it, waiting for ever
    paths = [str(item.image) for item in items]
    if "num_cpus" in inspect.signature(ray.data.read_binary_files).parameters:
        files = ray.data.read_binary_files(paths, include_paths=True, num_cpus=IO_CPUS)
    else:  # Ray before 2.50 takes the task options as a dict
        files = ray.data.read_binary_files(paths, include_paths=True, ray_remote_args={"num_cpus": IO_CPUS})
    return files.map_batches(functools.partial(_attach_masks, masks=masks), batch_format="numpy", num_cpus=IO_CPUS)


def _attach_masks(batch: dict[str, np.ndarray], masks: dict[str, tuple[str, str | None, str]]) -> dict[str, Any]:
    names = [Path(str(path)).name for path in batch["path"]]
    found = [masks[name] for name in names]
    columns = {"name": names, "image": list(batch["bytes"]),
               "mask": [Path(mask).read_bytes() for mask, _, _ in found],
               "forbidden": [None if banned is None else Path(banned).read_bytes() for _, banned, _ in found],
               "group": [group for _, _, group in found]}
    return {name: _column(name, values) for name, values in columns.items()}


def audit_with_ray(settings: AuditSettings, items: list[AuditItem], *, workers: int = 1,
                   batch_size: int = 8) -> Iterator[tuple[dict[str, Any], bytes]]:
    """The CLI's Ray engine: ``(row, encoded map)`` per image as results arrive (starts Ray if needed)."""
    if not items:
        return
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = audit_dataset(read_items(items), settings, workers=workers, batch_size=batch_size)
    for batch in results.iter_batches(batch_size=batch_size, batch_format="numpy"):
        for i in range(len(batch["image"])):
            if batch["error"][i]:
                raise getattr(errors, str(batch["error_type"][i]), InputError)(str(batch["error"][i]))
            yield row_of(batch, i), bytes(batch["map"][i])


def row_of(batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """Row ``i`` of an output batch as the local engine's dict (Python scalars, same keys, same order)."""
    row: dict[str, Any] = {}
    for name in ROW_COLUMNS:
        value = batch[name][i]
        row[name] = value.item() if isinstance(value, np.generic) else str(value)
    return row
