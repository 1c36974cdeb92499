"""gradsal.scale: engines that spread gradsal's work over a cluster (the ``scale`` extra: Ray Data).

Nothing here is imported by ``gradsal.core``; importing this package does not import Ray, its functions
do (and say which extra to install when it is missing).
"""

from __future__ import annotations

from typing import Any


def audit_dataset(dataset: Any, settings: Any, *, workers: int = 1, batch_size: int = 8) -> Any:
    """Audit a ``ray.data.Dataset`` of encoded images and masks; see :mod:`gradsal.scale.ray_audit`."""
    from .ray_audit import audit_dataset as run

    return run(dataset, settings, workers=workers, batch_size=batch_size)


def audit_with_ray(settings: Any, items: list[Any], *, workers: int = 1, batch_size: int = 8) -> Any:
    """Audit image files on Ray Data, yielding ``(row, encoded map)``; see :mod:`gradsal.scale.ray_audit`."""
    from .ray_audit import audit_with_ray as run

    return run(settings, items, workers=workers, batch_size=batch_size)


__all__ = ["audit_dataset", "audit_with_ray"]
