"""A planted-shortcut data set for audit tests and the audit benchmark, and a small model trained on it.

16x16 grey images on a mid-grey background with a bar in the middle (the object: horizontal for class 1,
vertical for class 0). Group ``A`` carries a 3x3 marker in the top-left corner, white or black. With the
shortcut the marker decides group A's label and the bar is drawn at random; group B has no marker and
its bar decides. Without the shortcut the bar decides in both groups and A's marker is random. Masks:
the bar (region) and the marker's corner (forbidden).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 16
MARKER = (slice(0, 3), slice(0, 3))
MEAN = 0.5  # the model sees pixel - 0.5: background near 0, marker +-0.5, bar +0.5


def bar_mask(horizontal: bool) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    if horizontal:
        mask[7:9, 4:12] = True
    else:
        mask[4:12, 7:9] = True
    return mask


def marker_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[MARKER] = True
    return mask


def make_images(n_per_group: int, *, shortcut: bool, seed: int) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """``(group, image (H, W) in [0, 1], region mask, label)`` for ``n_per_group`` images per group."""
    rng = np.random.default_rng(seed)
    samples = []
    for group in ("A", "B"):
        for _ in range(n_per_group):
            label = int(rng.integers(2))
            horizontal = bool(rng.integers(2)) if (group == "A" and shortcut) else bool(label)
            image = np.clip(0.5 + rng.normal(0.0, 0.03, size=(SIZE, SIZE)), 0.0, 1.0)
            image[bar_mask(horizontal)] = 1.0
            if group == "A":
                image[MARKER] = float(label) if shortcut else float(rng.integers(2))
            samples.append((group, image, bar_mask(horizontal), label))
    return samples


def train_model(samples: list[tuple[str, np.ndarray, np.ndarray, int]], path: Path, seed: int = 0) -> float:
    """Train a 256-16-2 ReLU MLP (input (1, 16, 16)) with Adam, save it as TorchScript; the train accuracy."""
    import torch

    torch.manual_seed(seed)
    x = torch.tensor(np.stack([s[1] for s in samples])[:, None] - MEAN, dtype=torch.float32)
    y = torch.tensor([s[3] for s in samples])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(300):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
    model.eval()
    torch.jit.script(model).save(str(path))
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def write_dataset(samples: list[tuple[str, np.ndarray, np.ndarray, int]], root: Path) -> dict[str, Path]:
    """Images, region masks, forbidden masks (PNG) and groups.csv under ``root``; their paths."""
    from PIL import Image

    paths = {name: root / name for name in ("images", "masks", "forbidden")}
    for folder in paths.values():
        folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,group"]
    corner = (marker_mask() * 255).astype(np.uint8)
    for i, (group, image, region, _) in enumerate(samples):
        name = f"img{i:05d}.png"
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(paths["images"] / name)
        Image.fromarray((region * 255).astype(np.uint8)).save(paths["masks"] / name)
        Image.fromarray(corner).save(paths["forbidden"] / name)
        lines.append(f"{name},{group}")
    paths["groups"] = root / "groups.csv"
    paths["groups"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
