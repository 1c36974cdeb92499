"""Entry point of the ``gradsal`` command: ``demo``, ``explain``, ``check``, ``evaluate`` and ``audit``.

Errors are one line on stderr with exit status 2 (bad arguments, unreadable files, wrong shapes),
never a traceback unless ``--debug``; ``check`` exits 1 when the gradients disagree.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..core import __version__
from ..core.errors import GradsalError
from .audit import add_audit_arguments

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"gradsal: error: {message} (see gradsal {self.prog.split()[-1]} --help)\n")


def _add_model_arguments(parser: argparse.ArgumentParser, *, inputs_required: bool) -> None:
    parser.add_argument("model", help="an .onnx file, a TorchScript file (.pt/.ts) or a torch.export .pt2")
    parser.add_argument("inputs", nargs="+" if inputs_required else "*", metavar="INPUT",
                        help="image files (any format pillow reads), folders of them (a folder without images: its "
                             ".npy files), or .npy arrays (C,H,W)")
    parser.add_argument("--output-name", help="ONNX: the output or intermediate tensor to explain")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="resize images to H x W (default: the ONNX model's declared input size)")
    parser.add_argument("--mean", nargs="+", type=float, help="per-channel mean subtracted after scaling to [0,1]")
    parser.add_argument("--std", nargs="+", type=float, help="per-channel std divided after --mean")
    parser.add_argument("--seed", type=int, default=0, help="random seed (noise, random check inputs)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradsal", description="Gradient saliency maps for PyTorch, ONNX and NumPy models.")
    parser.add_argument("--version", action="version", version=f"gradsal {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="explain the shipped reference models and write pictures (offline)")
    demo.add_argument("--out", default="gradsal-demo", help="output folder (default: gradsal-demo)")

    explain = sub.add_parser("explain", help="write a saliency overlay for each input")
    _add_model_arguments(explain, inputs_required=True)
    explain.add_argument("--method", choices=["vanilla", "gradxinput", "smoothgrad", "ig", "guided", "gradcam"],
                         default="vanilla")
    explain.add_argument("--target", default="top1", help="top1 (default), a class INDEX, or a NAME from --labels")
    explain.add_argument("--labels", help="class names: a text file (one per line) or a JSON list")
    explain.add_argument("--layer", help="Grad-CAM layer: ONNX tensor name or torch module name")
    explain.add_argument("--samples", type=int, default=50, help="SmoothGrad samples (default 50)")
    explain.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise level (default 0.15)")
    explain.add_argument("--steps", type=int, default=50, help="integrated-gradients steps (default 50)")
    explain.add_argument("--batch-size", type=int, help="rows per backend call (default: a memory budget)")
    explain.add_argument("--out", default="gradsal-out", help="output folder (default: gradsal-out)")
    explain.add_argument("--format", nargs="+", choices=["png", "npy", "json"], default=["png"],
                         help="png overlays (default), npy raw attributions; summary.json is always written")
    explain.add_argument("--quiet", action="store_true", help="no progress bar or messages")

    check = sub.add_parser("check", help="compare the model's gradients with finite differences")
    _add_model_arguments(check, inputs_required=False)
    check.add_argument("--float64", action="store_true", help="check in float64 (where the model allows)")

    evaluate = sub.add_parser("evaluate", help="compare methods: deletion/insertion AUC and time per method")
    _add_model_arguments(evaluate, inputs_required=True)
    evaluate.add_argument("--methods", nargs="+", default=["vanilla", "smoothgrad", "ig"],
                          choices=["vanilla", "gradxinput", "smoothgrad", "ig", "guided"])
    evaluate.add_argument("--step", type=float, default=0.05,
                          help="share of pixels removed/revealed per curve step (default 0.05)")
    evaluate.add_argument("--score", choices=["explained", "probability"], default="explained",
                          help="what the curves track: the explained output itself (default; logits go below 0) "
                               "or its softmax probability, in [0, 1]")
    evaluate.add_argument("--no-randomization", action="store_true",
                          help="skip the model-randomisation column (it costs one run per method and weight layer)")
    evaluate.add_argument("--out", default="gradsal-eval", help="output folder for the curves plot")

    audit = sub.add_parser("audit", help="does the model look inside the masks, per image and per group? (report)")
    _add_model_arguments(audit, inputs_required=True)
    add_audit_arguments(audit)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    if args.command == "explain":
        from .commands import run_explain

        return run_explain(args)
    if args.command == "check":
        from .commands import run_check

        return run_check(args)
    if args.command == "audit":
        from .audit import run_audit

        return run_audit(args)
    from .evaluate import run_evaluate

    return run_evaluate(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _dispatch(args)
    except BrokenPipeError:  # `gradsal ... | head`: the reader has gone; say nothing more
        sys.stderr.close()
        return 141
    except (GradsalError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).split())
        print(f"gradsal: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gradsal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
