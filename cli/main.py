"""Entry point of the ``gradsal`` command."""

from __future__ import annotations

import argparse
import sys

from ..core import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradsal", description="Gradient saliency maps for PyTorch, ONNX and NumPy models."
    )
    parser.add_argument("--version", action="version", version=f"gradsal {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
