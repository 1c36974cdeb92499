"""The ``explain-text`` command: which tokens (or bytes) of an input a model's output depends on.

``gradsal explain-text MODEL "some text" --tokenizer tokenizer.json`` tokenises the text with the
``tokenizers`` library (the ``text`` extra), feeds the ids (and an attention mask and token types, for
model inputs named so) to the ONNX model, differentiates at the embedding (see
:func:`gradsal.backends.at_tensor`) and writes one score per token: coloured in the terminal, as an
HTML page and as JSON. ``--bytes FILE`` feeds a file's bytes to a byte-level model instead (no
tokenizer). MODEL ``demo`` is the shipped text classifier with its own tokenizer.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import core
from ..core.errors import InputError, MissingDependencyError, TargetError
from ..core.methods import cli_names
from ..core.tokens import token_scores
from . import text_render

DEMO = "demo"
DEFAULT_METHOD = "ig"
# the methods that need only gradients at the embedding, the default first as the help lists them
METHODS = (DEFAULT_METHOD, *(name for name in cli_names(lambda method: method.for_text) if name != DEFAULT_METHOD))
TERMINAL_TOKENS = 400  # a longer input shows its first tokens in the terminal (all of them in HTML/JSON)


def add_parser(sub: Any) -> None:
    """Register ``explain-text`` on the ``gradsal`` sub-command parser."""
    p = sub.add_parser("explain-text", help="score each token of a text (or byte of a file) for a model's output")
    p.add_argument("model", help=f"an .onnx model that takes token ids or bytes, or {DEMO!r} (the shipped text "
                                 "classifier)")
    p.add_argument("text", nargs="?", help="the text to explain (not with --bytes)")
    p.add_argument("--tokenizer", help="a tokenizers JSON file (tokenizer.json); not needed for demo or --bytes")
    p.add_argument("--bytes", dest="bytes_file", metavar="FILE", help="explain FILE's bytes (a byte-level model)")
    p.add_argument("--layout", choices=["head", "head-tail"], default="head",
                   help="bytes: the file's first L bytes (head), or its first and last L/2 (head-tail)")
    p.add_argument("--pad-value", type=int, default=None,
                   help="bytes: the value that pads a short file (default 0); tokens: the baseline token id")
    p.add_argument("--input-name", help="ONNX: the integer input holding the ids (default: found)")
    p.add_argument("--tensor", help="ONNX: the float tensor to differentiate at (default: the embedding lookup)")
    p.add_argument("--output-name", help="ONNX: the output to explain (default: the first float output)")
    p.add_argument("--target", default="top1", help="top1 (default), a class INDEX, or a NAME from --labels")
    p.add_argument("--labels", help="class names: a text file (one per line) or a JSON list")
    p.add_argument("--similar-to", metavar="TEXT",
                   help="explain the output's similarity to TEXT's output (its dot product with TEXT's output, "
                        "normalised): for sentence encoders")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"{DEFAULT_METHOD} (default), {', '.join(METHODS[1:])}")
    p.add_argument("--baseline", default="pad", help="ig: pad (default: the pad token's embedding), zeros, or an id")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    p.add_argument("--samples", type=int, default=32, help="SmoothGrad samples (default 32)")
    p.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise level (default 0.15)")
    p.add_argument("--reduce", choices=["sum", "l2"], default="sum",
                   help="per token: sum over the embedding (signed, default) or its L2 norm")
    p.add_argument("--max-length", type=int, help="tokens: truncate to this many tokens")
    p.add_argument("--out", default="gradsal-text", help="folder for tokens.html and tokens.json (default "
                                                         "gradsal-text)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the terminal output (auto: when stdout is a terminal)")
    p.add_argument("--seed", type=int, default=0, help="SmoothGrad's noise seed")


@dataclass
class Encoded:
    """What is fed to the model and how it is shown."""

    inputs: dict[str, np.ndarray]  # every model input, one row
    id_input: str
    tokens: list[str]
    ids: np.ndarray  # (L,)
    pad_id: int
    keep: list[int]  # ids whose embedding a pad baseline keeps (special tokens)
    shown: int  # how many positions are real (the rest is padding)


def run_explain_text(args: argparse.Namespace) -> int:
    from ..backends._at_tensor import at_tensor

    model, tokenizer_file, labels = _resolve_model(args)
    declared = _declared_inputs(model)
    encoded = (_encode_bytes(args, declared) if args.bytes_file else
               _encode_text(args.text, tokenizer_file, declared, args.input_name, args.max_length, args.pad_value))
    backend = at_tensor(model, encoded.inputs, args.tensor, output_name=args.output_name,
                        id_input=args.input_name or encoded.id_input)
    x = backend.value
    outputs = backend.forward(x)
    target, what = _target(args, outputs, labels, model, tokenizer_file, declared)
    attributions, delta = _attribute(args, backend, x, target, encoded)
    scores = token_scores(attributions, args.reduce)[0][:encoded.shown]
    tokens = encoded.tokens[:encoded.shown]
    _report(args, model, tokens, encoded.ids[:encoded.shown], scores, what, delta, backend)
    return 0


# --------------------------------------------------------------------------------------------- the model
def _resolve_model(args: argparse.Namespace) -> tuple[Any, str | None, list[str] | None]:
    from .inputs import read_labels

    if args.model == DEMO and not Path(DEMO).is_file():  # a folder named demo is not a model
        from ..reference_models.text import load_text_classifier, text_metadata, text_tokenizer_path

        labels = read_labels(args.labels) or text_metadata()["class_names"]
        return str(load_text_classifier("onnx")), args.tokenizer or str(text_tokenizer_path()), labels
    path = Path(args.model)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{args.model!r}: explain-text takes an .onnx model (or {DEMO!r}); for a torch model use "
                         "gradsal.backends.at_tensor in Python")
    if not path.is_file():
        raise InputError(f"model file {args.model!r} does not exist")
    return str(path), args.tokenizer, read_labels(args.labels)


def _declared_inputs(model: str) -> dict[str, tuple[np.dtype, tuple[Any, ...] | None]]:
    from ..backends.onnx import _model_io as io

    onnx = io.import_onnx()
    proto = onnx.load(model, load_external_data=False)
    return {vi.name: (io.declared_dtype(vi) or np.dtype(np.int64), io.declared_shape(vi))
            for vi in io.data_inputs(proto.graph)}


# ------------------------------------------------------------------------------------------------ inputs
def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise MissingDependencyError("explain-text reads tokenizers with the tokenizers library (not installed): "
                                     "pip install 'gradsal[text]'") from exc
    return tokenizers


def _encode_text(text: str | None, tokenizer_file: str | None, declared: dict[str, Any], id_input: str | None,
                 max_length: int | None, pad_value: int | None) -> Encoded:
    if text is None:
        raise InputError("explain-text needs the TEXT to explain (or --bytes FILE for a byte-level model)")
    if not tokenizer_file:
        raise InputError("explain-text needs --tokenizer tokenizer.json (the model's tokenizers file) for text")
    tokenizers = _import_tokenizers()
    if not Path(tokenizer_file).is_file():
        raise InputError(f"tokenizer file {tokenizer_file!r} does not exist")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
    except Exception as exc:
        raise InputError(f"{tokenizer_file!r} is not a tokenizers JSON file: {' '.join(str(exc).split())}") from exc
    tokenizer.no_padding()
    if max_length:
        tokenizer.enable_truncation(max_length)
    encoding = tokenizer.encode(text)
    if not encoding.ids:
        raise InputError(f"the tokenizer makes no tokens of {text!r}")
    columns = {"ids": encoding.ids, "mask": encoding.attention_mask, "types": encoding.type_ids}
    roles = _input_roles(declared, id_input)
    inputs = {name: np.array([columns[role]], dtype=declared[name][0]) for name, role in roles.items()}
    ids_name = next(name for name, role in roles.items() if role == "ids")
    special = [tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "<s>", "</s>", "[BOS]", "[EOS]")]
    pad = pad_value if pad_value is not None else _pad_id(tokenizer)
    return Encoded(inputs, ids_name, list(encoding.tokens), np.array(encoding.ids), pad,
                   [s for s in special if s is not None], len(encoding.ids))


def _pad_id(tokenizer: Any) -> int:
    for token in ("[PAD]", "<pad>", "<PAD>", "[MASK]", "<mask>", "[UNK]", "<unk>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _input_roles(declared: dict[str, Any], id_input: str | None) -> dict[str, str]:
    """Which tokenizer column feeds each model input: ids, attention mask or token types, by name."""
    roles = {}
    for name in declared:
        lowered = name.lower()
        if name == id_input:
            roles[name] = "ids"
        elif "mask" in lowered:
            roles[name] = "mask"
        elif "type" in lowered or "segment" in lowered:
            roles[name] = "types"
        else:
            roles[name] = "ids"
    if list(roles.values()).count("ids") != 1:
        raise InputError(f"cannot tell which model input takes the token ids among {list(declared)}: pass "
                         "--input-name NAME (inputs named *mask* get the attention mask, *type* the token types)")
    return roles


def _encode_bytes(args: argparse.Namespace, declared: dict[str, Any]) -> Encoded:
    if args.text is not None:
        raise InputError("pass either TEXT or --bytes FILE, not both")
    if len(declared) != 1:
        raise InputError(f"--bytes needs a model with one input; this one has {list(declared)}")
    (name, (dtype, shape)), = declared.items()
    data = Path(args.bytes_file).read_bytes()
    if not data:
        raise InputError(f"{args.bytes_file!r} is empty: there are no bytes to explain")
    length = shape[-1] if shape and isinstance(shape[-1], int) else len(data)
    pad = 0 if args.pad_value is None else args.pad_value
    values = np.full(length, pad, dtype=np.int64)
    positions = np.full(length, -1)
    if args.layout == "head" or len(data) <= length:
        used = min(length, len(data))
        values[:used] = np.frombuffer(data[:used], np.uint8)
        positions[:used] = np.arange(used)
    else:
        half = length // 2
        tail = length - half
        values[:half] = np.frombuffer(data[:half], np.uint8)
        values[half:] = np.frombuffer(data[-tail:], np.uint8)
        positions = np.concatenate([np.arange(half), np.arange(len(data) - tail, len(data))])
    tokens = [_byte_token(int(v), int(p)) for v, p in zip(values, positions, strict=True)]
    real = int(np.max(np.nonzero(positions >= 0)[0])) + 1
    return Encoded({name: values[None].astype(dtype)}, name, tokens, values, pad, [], real)


def _byte_token(value: int, position: int) -> str:
    if position < 0 or value > 255:
        return "<pad>"
    char = chr(value)
    return char if 32 <= value < 127 else f"\\x{value:02x}"


# ---------------------------------------------------------------------------------------------- method
def _target(args: argparse.Namespace, outputs: np.ndarray, labels: list[str] | None, model: str,
            tokenizer_file: str | None, declared: dict[str, Any]) -> tuple[Any, str]:
    from ..backends._at_tensor import at_tensor
    from .commands import resolve_targets

    if args.similar_to is not None:
        other = _encode_text(args.similar_to, tokenizer_file, declared, args.input_name, args.max_length, None)
        reference = at_tensor(model, other.inputs, args.tensor, output_name=args.output_name,
                              id_input=args.input_name or other.id_input)
        theirs = reference.forward(reference.value).astype(np.float64)
        if theirs.shape[1:] != outputs.shape[1:]:
            raise InputError(f"--similar-to: the two outputs have shapes {outputs.shape} and {theirs.shape}; pass "
                             "--output-name of a pooled output (one vector per text)")
        norm = float(np.linalg.norm(theirs))
        return theirs / (norm or 1.0), f"similarity to {args.similar_to!r} (dot product with its unit output)"
    if outputs.ndim != 2:
        raise TargetError(f"the output has shape {outputs.shape}, not (1, classes): pass --output-name of a class "
                          "or pooled output, or --similar-to TEXT for an encoder")
    index = int(resolve_targets(args.target, outputs, labels)[0])
    name = labels[index] if labels and index < len(labels) else str(index)
    return index, f"class {name} (output {index}, value {float(outputs[0, index]):.4g})"


def _attribute(args: argparse.Namespace, backend: Any, x: np.ndarray, target: Any,
               encoded: Encoded) -> tuple[np.ndarray, float | None]:
    if args.method == "vanilla":
        return core.vanilla_gradient(backend, x, target), None
    if args.method == "gradxinput":
        return core.gradient_x_input(backend, x, target), None
    if args.method == "smoothgrad":
        return core.smoothgrad(backend, x, target, n_samples=args.samples, noise_level=args.noise,
                               seed=args.seed), None
    baseline = _baseline(args.baseline, backend, encoded)
    attributions, delta = core.integrated_gradients(backend, x, target, baseline=baseline, n_steps=args.steps,
                                                    return_delta=True)
    return attributions, float(delta[0])


def _baseline(choice: str, backend: Any, encoded: Encoded) -> np.ndarray:
    if choice == "zeros":
        return backend.baseline("zeros")
    if choice == "pad":
        return backend.baseline(token_id=encoded.pad_id, keep=encoded.keep)
    if choice.isdigit():
        return backend.baseline(token_id=int(choice), keep=encoded.keep)
    raise InputError(f"--baseline {choice!r}: use pad, zeros or a token id")


# ---------------------------------------------------------------------------------------------- output
def _report(args: argparse.Namespace, model: str, tokens: list[str], ids: np.ndarray, scores: np.ndarray,
            what: str, delta: float | None, backend: Any) -> None:
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    shown = len(tokens) if len(tokens) <= TERMINAL_TOKENS else TERMINAL_TOKENS
    method = {"ig": f"integrated gradients ({args.steps} steps, baseline {args.baseline})", "vanilla": "gradient",
              "gradxinput": "gradient x input", "smoothgrad": f"SmoothGrad ({args.samples} samples)"}[args.method]
    meaning = ("Red raises the output, blue lowers it." if args.reduce == "sum" else
               "L2 norms: magnitudes without sign (all red).")
    caption = f"{method} at {backend.name!r}, {args.reduce} over the embedding, explaining {what}. {meaning}"
    print(caption)
    print(text_render.terminal(tokens[:shown], scores[:shown], color=color))
    if shown < len(tokens):
        print(f"... ({len(tokens) - shown} more tokens in the HTML and JSON files)")
    print("largest: " + ", ".join(f"{text_render.display_token(t)!s}@{i} {s:+.3g}"
                                  for i, t, s in text_render.top_tokens(tokens, scores, 8)))
    if delta is not None:
        print(f"completeness: the scores sum to {float(np.sum(scores)):.6g}; gap to the output change from the "
              f"baseline {delta:.3g}" if args.reduce == "sum" else f"integrated-gradients completeness gap {delta:.3g}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"gradsal: {Path(model).name}"
    (out / "tokens.html").write_text(text_render.to_html(tokens, scores, title=title, caption=caption),
                                     encoding="utf-8")
    details = {"model": model, "tensor": backend.name, "method": args.method, "reduce": args.reduce,
               "explained": what, "completeness_gap": delta}
    (out / "tokens.json").write_text(text_render.to_json(tokens, ids, scores, **details), encoding="utf-8")
    print(f"wrote {out / 'tokens.html'} and {out / 'tokens.json'}")
