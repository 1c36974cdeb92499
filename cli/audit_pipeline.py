"""The per-image work of an audit, shared by every engine: decode the image and its masks, explain, score.

An :class:`AuditRecord` carries the encoded bytes of one image, its region mask and, optionally, its
forbidden mask; an :class:`Auditor` (one per process or Ray actor, holding one backend) turns it into a
row of results and the saliency map. The local engine and the Ray engine both call
:meth:`Auditor.audit` on one image at a time, so a row never depends on which images shared a batch, and
SmoothGrad's noise is seeded from ``--seed`` and the image's name, not its position: both engines give
the same rows to the bit.

Images are preprocessed exactly as ``gradsal explain`` does it (:func:`.inputs.prepare_image` with the
resolved :class:`~.preprocess.Preprocessing` the settings carry; a channels-last model wrapped by
:func:`.commands.with_preprocessing`). The map is ``to_saliency_map(attributions, sign=sign,
normalize=None)`` (Grad-CAM's map as it is) on the model's canvas, carried back onto the image's own
pixels, where the masks live, by the placement's inverse (:meth:`~.preprocess.Placement.to_original`):
a crop or letterbox is undone, and pixels that a crop cut away get 0.
"""

from __future__ import annotations

import argparse
import csv
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import core
from ..core.errors import GradsalError, InputError, MissingDependencyError
from ..core.methods import by_cli_name
from . import preprocess
from .commands import attribution_function, method_target, resolve_targets, with_preprocessing
from .images import DEFAULT_MAX_PIXELS
from .inputs import (
    IMAGE_SUFFIXES,
    LoadedModel,
    expand_inputs,
    load_model,
    prepare_image,
    read_constant_inputs,
)
from .preprocess import Placement, Preprocessing

METRICS = ("mass_accuracy", "rank_accuracy", "pointing_game", "energy_pointing_game", "forbidden_share")
MASK_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class AuditSettings:
    """Everything a worker needs to build its backend and explain an image (small and picklable).

    ``preprocessing``: how images become the model's input, resolved once by the caller (the command
    line resolves it from the model, its preprocessing file, ``--preset`` and the flags, as ``explain``
    does); None: what the model declares and its ``MODEL.preprocess.json``, if any. ``constant_inputs``:
    ``NAME=FILE.npy`` as ``--constant-input`` takes them (paths every worker can read).
    """

    model: str
    method: str = "vanilla"
    target: str = "top1"
    labels: tuple[str, ...] | None = None
    output_name: str | None = None
    layer: str | None = None
    samples: int = 50
    noise: float = 0.15
    steps: int = 50
    seed: int = 0
    sign: str = "abs"
    input_name: str | None = None
    constant_inputs: tuple[str, ...] = ()
    model_class: str | None = None
    output_batch_axis: int | None = 0
    straight_through: bool = False
    preprocessing: Preprocessing | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def method_arguments(self) -> argparse.Namespace:
        """The fields :func:`attribution_function` reads, one image per backend call."""
        return argparse.Namespace(method=self.method, layer=self.layer, samples=self.samples, noise=self.noise,
                                  steps=self.steps, seed=self.seed, batch_size=None)


@dataclass(frozen=True)
class AuditRecord:
    """One image and its masks as encoded file bytes (PNG, JPEG, ... or a mask as ``.npy``)."""

    name: str
    image: bytes
    mask: bytes
    forbidden: bytes | None = None
    group: str = "all"


@dataclass(frozen=True)
class AuditItem:
    """Where one image and its masks are on disk, and its group."""

    image: Path
    mask: Path
    forbidden: Path | None
    group: str

    @property
    def name(self) -> str:
        return self.image.name

    def load(self) -> AuditRecord:
        """The files' bytes as a record."""
        forbidden = _read_bytes(self.forbidden) if self.forbidden is not None else None
        return AuditRecord(self.name, _read_bytes(self.image), _read_bytes(self.mask), forbidden, self.group)


class Auditor:
    """Explains and scores images one at a time with one backend (build one per process or actor)."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self.explain = attribution_function(settings.method_arguments())
        self.model = open_audit_model(settings)

    def audit(self, record: AuditRecord) -> tuple[dict[str, Any], np.ndarray]:
        """The row (image, group, predicted, target, score and the metrics) and the map at the image's size."""
        try:
            return self._audit(record)
        except GradsalError as exc:
            raise type(exc)(f"image {record.name}: {exc}") from exc

    def _audit(self, record: AuditRecord) -> tuple[dict[str, Any], np.ndarray]:
        image = prepare_image(io.BytesIO(record.image), self.model.preprocessing,  # type: ignore[arg-type]
                              max_pixels=self.settings.max_pixels)
        x, image_hw = image.array[None], (image.picture.shape[0], image.picture.shape[1])
        mask = decode_mask(record.mask, image_hw, f"the mask of image {record.name}")
        forbidden = None if record.forbidden is None else \
            decode_mask(record.forbidden, image_hw, f"the forbidden mask of image {record.name}")
        outputs = np.asarray(self.model.backend.forward(x))
        labels = list(self.settings.labels) if self.settings.labels else None
        targets = resolve_targets(self.settings.target, outputs, labels)
        attributions = self.explain(self.model.backend, x, method_target(targets, outputs), name_offset(record.name))
        saliency = self._map(attributions, image.placement)
        flat = outputs.reshape(1, -1)
        row: dict[str, Any] = {
            "image": record.name, "group": record.group, "predicted": int(flat[0].argmax()),
            "target": int(targets[0]), "score": float(flat[0, targets[0]]),
        }
        row.update(core.localisation_metrics(saliency, mask, forbidden))
        return row, saliency

    def _map(self, attributions: np.ndarray, placement: Placement) -> np.ndarray:
        """The map on the image's own pixels: what a crop cut away is 0, a letterbox's padding is dropped."""
        if by_cli_name(self.settings.method).returns_map:
            maps = np.asarray(attributions, dtype=np.float64)
        else:
            maps = core.to_saliency_map(attributions, sign=self.settings.sign, normalize=None).astype(np.float64)
        return placement.to_original(maps[0])


def open_audit_model(settings: AuditSettings) -> LoadedModel:
    """The backend the settings name, fed by their preprocessing (wrapped when it is channels-last)."""
    model = load_model(settings.model, output_name=settings.output_name, input_name=settings.input_name,
                       constant_inputs=read_constant_inputs(list(settings.constant_inputs)),
                       model_class=settings.model_class, output_batch_axis=settings.output_batch_axis,
                       straight_through=settings.straight_through)
    prep = settings.preprocessing
    if prep is None:
        prep = preprocess.choose(model.input_shape, model.path)[0]
    return with_preprocessing(model, prep)


def decode_mask(data: bytes, image_hw: tuple[int, int], what: str) -> np.ndarray:
    """A mask file's bytes as a boolean (H, W): any non-zero pixel (or array entry) is in the region."""
    if data.startswith(NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"cannot read {what} as a NumPy array: {exc}") from exc
        array = np.squeeze(array)
    else:
        try:
            from PIL import Image
        except ImportError as exc:
            raise MissingDependencyError("reading masks needs pillow: pip install 'gradsal[cli]'") from exc
        try:
            with Image.open(io.BytesIO(data)) as img:
                array = np.asarray(img.convert("L"))
        except OSError as exc:
            raise InputError(f"cannot read {what}: {exc}") from exc
    if array.shape != image_hw:
        raise InputError(f"{what} is {'x'.join(map(str, array.shape))} but the image is "
                         f"{image_hw[0]}x{image_hw[1]}: masks must have the image's own size")
    return array != 0


def encode_map(saliency: np.ndarray) -> bytes:
    """The map as ``.npy`` bytes, float16 scaled to max 1 (a positive scaling: the metrics are unchanged)."""
    peak = float(saliency.max())
    scaled = saliency / peak if peak > 0 else saliency
    buffer = io.BytesIO()
    np.save(buffer, scaled.astype(np.float16))
    return buffer.getvalue()


def name_offset(name: str) -> int:
    """A stable per-image offset for seeds (CRC-32 of the name), the same in every process."""
    return zlib.crc32(name.encode("utf-8")) & 0x3FFFFFFF


def plan_audit(inputs: list[str], masks: str, forbidden: str | None = None,
               groups: dict[str, str] | None = None) -> list[AuditItem]:
    """Pair every image with its masks by file name (stem); a missing mask or group names the image."""
    images = [p for p in expand_inputs(inputs) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise InputError(f"no image files found in {inputs}")
    names: dict[str, Path] = {}
    for path in images:
        if path.name in names:
            raise InputError(f"two images are named {path.name} ({names[path.name]} and {path}): masks are "
                             "matched by file name, so names must be unique")
        names[path.name] = path
    region = _masks_by_stem(masks, "--masks")
    banned = _masks_by_stem(forbidden, "--forbidden") if forbidden else None
    items = []
    for path in images:
        if path.stem not in region:
            raise InputError(f"image {path.name} has no mask in {masks} (expected {path.stem}.png or .npy)")
        if banned is not None and path.stem not in banned:
            raise InputError(f"image {path.name} has no forbidden mask in {forbidden}")
        group = "all" if groups is None else _group_of(path, groups)
        items.append(AuditItem(path, region[path.stem], banned[path.stem] if banned else None, group))
    return items


def read_groups(table: str, column: str, image_column: str = "image") -> dict[str, str]:
    """Image file name (or stem) -> group, from a CSV table with a header row."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's BOM
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            for needed, option in ((image_column, "--image-column"), (column, "--group-column")):
                if needed not in fields:
                    raise InputError(f"{table} has no column {needed!r} (its columns: {', '.join(fields)}); "
                                     f"choose one with {option}")
            return {row[image_column].strip(): row[column].strip() for row in reader}
    except OSError as exc:
        raise InputError(f"cannot read the groups table {table}: {exc}") from exc


def _group_of(path: Path, groups: dict[str, str]) -> str:
    for key in (path.name, path.stem):
        if key in groups:
            return groups[key]
    raise InputError(f"image {path.name} is not in the groups table (add a row for it)")


def _masks_by_stem(folder: str, option: str) -> dict[str, Path]:
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{option} {folder!r} is not a folder of masks")
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in MASK_SUFFIXES:
            continue
        if path.stem in found:
            raise InputError(f"{folder} holds two masks for {path.stem} ({found[path.stem].name} and {path.name})")
        found[path.stem] = path
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def audit_locally(settings: AuditSettings, items: list[AuditItem]) -> Iterator[tuple[dict[str, Any], bytes]]:
    """The local engine: rows and encoded maps, one image at a time, in the order given."""
    auditor = Auditor(settings)
    for item in items:
        row, saliency = auditor.audit(item.load())
        yield row, encode_map(saliency)
