"""Rebuild the shipped text classifier: ``python -m gradsal.reference_models.train_text [--out DIR]``.

A sentiment task generated here from word lists, so nothing is downloaded: sentences such as "honestly
the plot was not very good ." are built from a subject, a verb, an optional negation ("not", "never"),
an optional intensifier and an adjective from a positive or a negative list, with optional filler
words around them. The label is the adjective's sentiment, flipped by a negation; in "A, but B" it is
B's. Sentences are drawn with a seeded NumPy generator (train and test from separate seeds), tokenised
by a word-level tokenizer whose vocabulary is every word of the lists (``text_tokenizer.json``, in the
format of the ``tokenizers`` library: lower-cased, split on whitespace and punctuation, ``[PAD]`` = 0,
``[UNK]`` = 1), and padded with ``[PAD]`` to the longest sentence. :class:`~.architectures.TextClassifier`
is trained in float64 on one thread (as :mod:`.train`), shipped as float32: a ``state_dict``, ONNX
(input ``input_ids`` int64 ``(batch, tokens)``, output ``logits``) and ``text_classifier.json`` with the
metadata.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .train import DEFAULT_OUT, OPSET, compact_json, deterministic_torch, fit, rebuild_arguments, save_state_dict

SEED = 0
N_TRAIN = 4000
N_TEST = 1000
EPOCHS = 12
BATCH = 64
LR = 1e-2
MODEL_KWARGS = {"dim": 16, "hidden": 32, "num_classes": 2, "kernel": 5, "pad_id": 0}
CLASS_NAMES = ["negative", "positive"]
SPECIAL = ["[PAD]", "[UNK]"]
POSITIVE = ["good", "great", "excellent", "wonderful", "delightful", "brilliant", "superb", "lovely", "enjoyable",
            "fantastic", "charming", "moving"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "dreadful", "weak", "disappointing",
            "clumsy", "tedious"]
SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the story", "the music", "the ending", "the cast",
            "the book", "this show", "the script", "the dialogue"]
VERBS = ["was", "is", "seemed", "felt", "looked", "sounded"]
NEGATIONS = ["not", "never"]
INTENSIFIERS = ["very", "really", "quite", "truly", "so", "rather"]
PREFIXES = ["honestly", "overall", "i think", "frankly", "well", "in the end"]
SUFFIXES = ["to me", "overall", "at times", "for sure", "in parts"]
SAMPLE_SENTENCES = ["the plot was not very good .", "honestly the acting was superb !",
                    "this film never felt boring", "the music was dull , but the cast was lovely"]


def vocabulary() -> dict[str, int]:
    """Every token of the generator's word lists, after the special tokens, in a fixed order."""
    words: list[str] = list(SPECIAL)
    phrases = [*POSITIVE, *NEGATIVE, *SUBJECTS, *VERBS, *NEGATIONS, *INTENSIFIERS, *PREFIXES, *SUFFIXES,
               ".", "!", ",", "but"]
    for phrase in phrases:
        for word in phrase.split():
            if word not in words:
                words.append(word)
    return {word: index for index, word in enumerate(words)}


def tokenizer_json(vocab: dict[str, int]) -> dict[str, Any]:
    """A word-level tokenizer in the ``tokenizers`` library's JSON format (``Tokenizer.from_file`` reads it)."""
    added = [{"id": vocab[token], "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for token in SPECIAL]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}


def clause(rng: np.random.Generator) -> tuple[list[str], int]:
    """Subject, verb, optional negation and intensifier, adjective; its label (1 positive, 0 negative)."""
    positive = bool(rng.integers(2))
    negated = rng.random() < 0.35
    words = [str(rng.choice(SUBJECTS)), str(rng.choice(VERBS))]
    if negated:
        words.append(str(rng.choice(NEGATIONS)))
    if rng.random() < 0.5:
        words.append(str(rng.choice(INTENSIFIERS)))
    words.append(str(rng.choice(POSITIVE if positive else NEGATIVE)))
    return words, int(positive != negated)


def sentence(rng: np.random.Generator) -> tuple[str, int]:
    """One generated sentence and its label: a clause's, or after "but" the second clause's."""
    words, label = clause(rng)
    if rng.random() < 0.25:
        second, label = clause(rng)
        words += [",", "but"] if rng.random() < 0.5 else ["but"]
        words += second
    if rng.random() < 0.3:
        words.insert(0, str(rng.choice(PREFIXES)))
    if rng.random() < 0.3:
        words.append(str(rng.choice(SUFFIXES)))
    if rng.random() < 0.5:
        words.append(str(rng.choice([".", "!"])))
    return " ".join(words), label


def encode(texts: list[str], vocab: dict[str, int], length: int | None = None) -> np.ndarray:
    """Ids ``(N, length)`` (default: the longest text), padded with ``[PAD]``; the tokenizer's own rules
    (lower case, words and punctuation split apart) re-done here so training needs no ``tokenizers``."""
    import re

    rows = [[vocab.get(w, vocab["[UNK]"]) for w in re.findall(r"\w+|[^\w\s]+", text.lower())] for text in texts]
    width = length or max(len(r) for r in rows)
    ids = np.full((len(rows), width), vocab["[PAD]"], dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row[:width]
    return ids


def dataset(n: int, seed: int, vocab: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = [sentence(rng) for _ in range(n)]
    texts = [t for t, _ in pairs]
    return texts, encode(texts, vocab), np.array([label for _, label in pairs], dtype=np.int64)


def accuracy(model: Any, ids: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of sentences whose argmax logit is the label."""
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(ids)).argmax(dim=1).numpy() == labels).mean())


def export_onnx(model: Any, example: np.ndarray, path: Path) -> None:
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.from_numpy(example),), buffer, opset_version=OPSET,
                          input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}},
                          dynamo=False)
    path.write_bytes(buffer.getvalue())


def build(out: Path = DEFAULT_OUT, seed: int = SEED) -> dict[str, Any]:
    """Train the text classifier into ``out``; returns (and writes) its metadata."""
    import torch

    from .architectures import TextClassifier

    out.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    _, train_ids, train_labels = dataset(N_TRAIN, seed, vocab)
    _, test_ids, test_labels = dataset(N_TEST, seed + 1, vocab)
    with deterministic_torch(seed):
        model = TextClassifier(len(vocab), **MODEL_KWARGS).double()
        fit(model, train_ids, train_labels, epochs=EPOCHS, batch=BATCH, lr=LR, seed=seed)
    model = model.float().eval()
    test_accuracy = accuracy(model, test_ids, test_labels)
    save_state_dict(model, out / "text_classifier.pt")
    export_onnx(model, test_ids[:2], out / "text_classifier.onnx")
    (out / "text_tokenizer.json").write_text(json.dumps(tokenizer_json(vocab), indent=1) + "\n", encoding="utf-8")
    metadata = {
        "format_version": 1, "seed": seed, "opset": OPSET, "torch_version": torch.__version__.split("+")[0],
        "rebuild": "python -m gradsal.reference_models.train_text",
        "architecture": "TextClassifier", "kwargs": {"vocab_size": len(vocab), **MODEL_KWARGS},
        "onnx": "text_classifier.onnx", "state_dict": "text_classifier.pt", "tokenizer": "text_tokenizer.json",
        "input_name": "input_ids", "output_name": "logits", "pad_id": vocab["[PAD]"], "class_names": CLASS_NAMES,
        "embedding_module": "embedding", "test_accuracy": test_accuracy, "n_train": N_TRAIN, "n_test": N_TEST,
        "data": "generated sentences (see gradsal.reference_models.train_text), train seed = seed, test seed + 1",
        "training": {"optimizer": "Adam", "lr": LR, "schedule": "cosine", "epochs": EPOCHS, "batch_size": BATCH,
                     "dtype": "float64, shipped as float32"},
        "samples": SAMPLE_SENTENCES,
    }
    (out / "text_classifier.json").write_text(compact_json(metadata), encoding="utf-8")
    return metadata


def main(argv: list[str] | None = None) -> int:
    args = rebuild_arguments("train_text", "text classifier", SEED, argv)
    metadata = build(args.out, args.seed)
    print(f"text_classifier: test accuracy {metadata['test_accuracy']:.4f} on {metadata['n_test']} generated "
          f"sentences; vocabulary of {metadata['kwargs']['vocab_size']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
