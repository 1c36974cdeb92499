"""Entry point of the ``gradsal`` command: ``demo``, ``explain``, ``check``, ``inspect``, ``evaluate``,
``explain-text`` and ``audit``.

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
from ..core.methods import cli_names
from . import messages
from .audit import add_audit_arguments
from .images import DEFAULT_MAX_PIXELS
from .messages import in_cli_terms, printing_warnings

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"gradsal: error: {message} (see gradsal {self.prog.split()[-1]} --help)\n")


def _add_model_arguments(parser: argparse.ArgumentParser, *, inputs_required: bool) -> None:
    parser.add_argument("model", help="an .onnx file, a TorchScript file (.pt/.ts), a torch.export .pt2, or a "
                                      "state_dict (.pth) with --model-class")
    parser.add_argument("inputs", nargs="+" if inputs_required else "*", metavar="INPUT",
                        help="image files (any format pillow reads), folders of them (a folder without images: its "
                             ".npy files), or .npy arrays (C,H,W), (H,W,C) for a channels-last model")
    parser.add_argument("--output-name", help="ONNX: the output or intermediate tensor to explain")
    _add_tensor_and_preprocessing_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (noise, random check inputs)")


def _batch_axis(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an axis number or 'none', not {text!r}") from None


def _add_tensor_and_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    from .preprocess import CHANNEL_ORDERS, LAYOUTS, PRESETS, RESIZE_MODES

    parser.add_argument("--input-name", help="ONNX: the input to differentiate (when the model has several)")
    parser.add_argument("--constant-input", action="append", metavar="NAME=FILE.npy",
                        help="ONNX: fix another input to the array in FILE.npy (repeatable)")
    parser.add_argument("--output-batch-axis", type=_batch_axis, default=0, metavar="AXIS",
                        help="ONNX: the explained output's batch axis when it is not the first (a time-major "
                             "(T, N, C) output: 1); 'none': the output has no batch axis (one sample per call)")
    parser.add_argument("--straight-through", action="store_true",
                        help="ONNX: differentiate a quantised model as the float network it approximates "
                             "(QuantizeLinear/DequantizeLinear and dynamic quantisation; gradsal warns)")
    parser.add_argument("--model-class", metavar="PACKAGE.MODULE:CLASS",
                        help="load a state_dict file into this architecture (called with no arguments)")
    parser.add_argument("--preset", choices=list(PRESETS), help="named preprocessing (see README)")
    parser.add_argument("--preprocess", metavar="FILE.json",
                        help="preprocessing file (default: MODEL.preprocess.json beside the model, if present)")
    parser.add_argument("--layout", type=str.upper, choices=LAYOUTS,
                        help="how the model takes images (default: read from its declared input shape)")
    parser.add_argument("--channel-order", type=str.upper, choices=CHANNEL_ORDERS, help="RGB (default) or BGR")
    parser.add_argument("--pixel-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="map pixels linearly onto [LOW, HIGH] before --mean/--std (default 0 1)")
    parser.add_argument("--mean", nargs="+", type=float,
                        help="per-channel mean subtracted after --pixel-range, in the model's channel order")
    parser.add_argument("--std", nargs="+", type=float, help="per-channel std divided after --mean")
    parser.add_argument("--size", nargs="+", metavar="H [W]",
                        help="model input size: S (S x S) or H W, a side may be 'auto' to keep the aspect "
                             "(default: the model's declared input size)")
    parser.add_argument("--resize", choices=RESIZE_MODES,
                        help="stretch (default), crop (shorter side, centre crop) or letterbox (fit and pad)")
    parser.add_argument("--crop-fraction", type=float, metavar="F",
                        help="with --resize crop: the crop's share of the resized shorter side (e.g. 0.875)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images larger than this many pixels (default {DEFAULT_MAX_PIXELS})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradsal", description="Gradient saliency maps for PyTorch, ONNX and NumPy models.")
    parser.add_argument("--version", action="version", version=f"gradsal {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="explain the shipped reference models and write pictures (offline)")
    demo.add_argument("--out", default="gradsal-demo", help="output folder (default: gradsal-demo)")

    explain = sub.add_parser("explain", help="write a saliency overlay for each input")
    _add_model_arguments(explain, inputs_required=True)
    explain.add_argument("--method", choices=cli_names(), default="vanilla")
    explain.add_argument("--target", default="top1", help="top1 (default), a class INDEX, or a NAME from --labels")
    explain.add_argument("--labels", help="class names: a text file (one per line) or a JSON list")
    explain.add_argument("--layer", help="Grad-CAM layer: ONNX tensor name, torch module name, or auto (the last "
                                         "activation with a spatial grid larger than 1x1; see gradsal inspect)")
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
    check.add_argument("--directions", type=int, default=16,
                       help="directions checked (default 16: about 100 forward passes); more is more thorough")
    check.add_argument("--nudge", type=float, default=None,
                       help="check at the input plus Gaussian noise of this share of its range (default: 1e-3 "
                            "for images, whose flat regions put the model on kinks; 0: at the input itself)")

    inspect = sub.add_parser("inspect", help="list a model's inputs, outputs, preprocessing and Grad-CAM layers "
                                             "(their grid sizes at the first INPUT's size, if one is given)")
    _add_model_arguments(inspect, inputs_required=False)

    evaluate = sub.add_parser("evaluate", help="compare methods: deletion/insertion AUC and time per method")
    _add_model_arguments(evaluate, inputs_required=True)
    evaluate.add_argument("--methods", nargs="+", default=["vanilla", "smoothgrad", "ig"],
                          choices=cli_names(lambda method: not method.needs_layer))
    evaluate.add_argument("--step", type=float, default=0.05,
                          help="share of pixels removed/revealed per curve step (default 0.05)")
    evaluate.add_argument("--score", choices=["explained", "probability"], default="explained",
                          help="what the curves track: the explained output itself (default; logits go below 0) "
                               "or its softmax probability, in [0, 1]")
    evaluate.add_argument("--no-randomization", action="store_true",
                          help="skip the model-randomisation column (it costs one run per method and weight layer)")
    evaluate.add_argument("--out", default="gradsal-eval", help="output folder for the curves plot")

    from .text import add_parser as add_explain_text

    add_explain_text(sub)
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
    if args.command == "explain-text":
        from .text import run_explain_text

        return run_explain_text(args)
    if args.command == "check":
        from .commands import run_check

        return run_check(args)
    if args.command == "inspect":
        from .inspect import run_inspect

        return run_inspect(args)
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
        with printing_warnings():
            status = _dispatch(args)
        messages.flush()
        return status
    except BrokenPipeError:  # `gradsal ... | head`: the reader has gone; say nothing more
        sys.stderr.close()
        return 141
    except (GradsalError, OSError) as exc:
        messages.discard()
        if args.debug:
            traceback.print_exc()
        print(f"gradsal: error: {in_cli_terms(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gradsal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
