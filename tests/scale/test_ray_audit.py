"""The Ray engine on a local two-CPU cluster gives the local engine's results to the bit.

Skipped where Ray is not installed (the ``scale`` extra). One cluster for the module: starting Ray
costs seconds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'gradsal[scale]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'gradsal[scale]'")
pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")

from gradsal.cli.audit_pipeline import Auditor, AuditSettings, plan_audit  # noqa: E402
from gradsal.cli.main import main  # noqa: E402
from gradsal.reference_models import zoo  # noqa: E402
from gradsal.scale import audit_dataset  # noqa: E402

MODEL = zoo.data_path("digits_cnn.onnx")  # (1, 1, 32, 32) -> 10 classes; onnxruntime starts fast in an actor
N_IMAGES = 10


@pytest.fixture(scope="module")
def cluster() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random 40x36 grey images (resized to the model's 32x32 on reading) with random rectangles as masks."""
    root = tmp_path_factory.mktemp("ray_audit")
    rng = np.random.default_rng(0)
    paths = {name: root / name for name in ("images", "masks", "forbidden")}
    for folder in paths.values():
        folder.mkdir()
    for i in range(N_IMAGES):
        name = f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(40, 36), dtype=np.uint8)).save(paths["images"] / name)
        for folder in ("masks", "forbidden"):
            mask = np.zeros((40, 36), dtype=np.uint8)
            top, left = rng.integers(0, 30), rng.integers(0, 26)
            mask[top:top + 10, left:left + 10] = 255
            Image.fromarray(mask).save(paths[folder] / name)
    groups = ["image,site"] + [f"im{i:02d}.png,{'north' if i % 2 else 'south'}" for i in range(N_IMAGES)]
    paths["groups"] = root / "groups.csv"
    paths["groups"].write_text("\n".join(groups) + "\n", encoding="utf-8")
    return paths


def audit_args(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["audit", str(MODEL), str(paths["images"]), "--masks", str(paths["masks"]), "--forbidden",
            str(paths["forbidden"]), "--groups", str(paths["groups"]), "--group-column", "site", "--method",
            "smoothgrad", "--samples", "4", "--bootstrap", "200", "--quiet", "--out", str(out), *extra]


def test_the_ray_engine_gives_the_local_results_to_the_bit(cluster: object, data: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """With preprocessing flags, which every actor must rebuild from the settings (a crop, [-1, 1], a std)."""
    preprocessing = ["--resize", "crop", "--crop-fraction", "0.875", "--pixel-range", "-1", "1", "--std", "0.9"]
    assert main(audit_args(data, tmp_path / "local", *preprocessing)) == 0
    assert main(audit_args(data, tmp_path / "ray", "--engine", "ray", "--workers", "2", *preprocessing)) == 0
    local = (tmp_path / "local" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    scaled = (tmp_path / "ray" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(local) == N_IMAGES and sorted(local) == sorted(scaled)  # rows arrive in any order
    for row in map(json.loads, local):
        name = f"{row['image']}.npy"
        assert (tmp_path / "local" / "maps" / name).read_bytes() == (tmp_path / "ray" / "maps" / name).read_bytes()
        # the 40x36 image scaled to 41x37 and cropped to 32x32: its top and bottom rows are cut away
        assert not np.load(tmp_path / "ray" / "maps" / name)[[0, -1]].any()
    assert (tmp_path / "local" / "summary.json").read_bytes() == (tmp_path / "ray" / "summary.json").read_bytes()


def test_a_users_dataset(cluster: object, data: dict[str, Path]) -> None:
    """The Python API on a dataset built by the user; a mis-sized mask comes back as that row's error."""
    items = plan_audit([str(data["images"])], str(data["masks"]))
    settings = AuditSettings(model=str(MODEL), method="vanilla")
    records = [item.load() for item in items[:4]]
    rows = [{"name": r.name, "image": r.image, "mask": r.mask, "group": "g"} for r in records]
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    rows[3]["mask"] = buffer.getvalue()
    result = audit_dataset(ray.data.from_items(rows), settings, workers=1, batch_size=2).take_all()
    by_name = {row["image"]: row for row in result}
    auditor = Auditor(settings)
    for record in records[:3]:
        expected, _ = auditor.audit(record)
        got = by_name[record.name]
        assert got["error"] == ""
        for key in ("predicted", "target", "score", "mass_accuracy", "rank_accuracy", "pointing_game",
                    "energy_pointing_game"):
            assert got[key] == expected[key], key
    assert "8x8" in by_name[records[3].name]["error"] and records[3].name in by_name[records[3].name]["error"]
