"""Mutation check: apply one small, named wrong-gradient change at a time to a copy of the repository and
run the tests that should catch it. A mutant is "killed" when those tests fail, "survived" when they pass.

The repository (tracked and untracked, not ignored, files) is copied once into a temporary directory;
the real files are never edited. The copy's packages are imported through a ``gradsal`` directory of
symbolic links put first on ``PYTHONPATH`` (ahead of the editable install), which the script checks
before the first mutant. Each mutant replaces one exact source snippet, which must occur exactly once
in its file (``tests/test_mutation_table.py`` checks that for the whole table), runs
``pytest -x`` on its test files in the copy, and restores the file.

    python benchmarks/mutate.py                     # every mutant (a few minutes per ten)
    python benchmarks/mutate.py --list              # names, files and test files
    python benchmarks/mutate.py --only selu-gamma-x1.02 --only erf-constant-1pc
    python benchmarks/mutate.py --baseline          # also run each distinct test set unmutated first
    python benchmarks/mutate.py --only NAME --tests tests/onnx/test_elementwise.py   # other tests

To add mutants, append dicts to ``MUTANTS``: ``name``, ``file`` (relative to the repository root),
``find`` (the exact snippet), ``replace``, ``tests`` (test files or node ids) and ``why`` (one line).
Exit status: 0 when every mutant selected was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "core", "backends": "backends", "reference_models": "reference_models", "cli": "cli"}

ONNX_POINTWISE = ["tests/onnx/test_float64_references.py", "tests/onnx/test_default_attributes.py",
                  "tests/onnx/test_elementwise.py"]
ONNX_SPATIAL = ["tests/onnx/test_float64_references.py", "tests/onnx/test_default_attributes.py",
                "tests/onnx/test_conv.py", "tests/onnx/test_conv_pool.py", "tests/onnx/test_conv_resize.py"]
TORCH_RELU = ["tests/torch/test_torch_relu_rules_deep.py", "tests/torch/test_torch_relu_rules.py",
              "tests/torch/test_torch_methods.py"]
FAST_PATH = ["tests/torch/test_torch_fast_path_float32.py"]
CORE = ["tests/core/test_core_closed_form.py", "tests/core/test_core_integrated_gradients.py",
        "tests/core/test_core_gauss_legendre.py", "tests/core/test_core_smoothgrad.py",
        "tests/torch/test_torch_fast_path_float32.py"]
RULES = "backends/onnx/rules/"
POINTWISE, FORMS = RULES + "pointwise.py", RULES + "forms.py"
CONVOLUTION, NORMALISATION = RULES + "convolution.py", RULES + "normalisation.py"
POOLING, RESIZING = RULES + "pooling.py", RULES + "resizing.py"
GC = "core/gradcheck.py"
# the real-model power tests need $GRADSAL_CORPUS_DIR (the copy has no .cache); without it they skip
CHECKER = ["tests/core/test_core_gradcheck_power.py", "tests/core/test_core_gradcheck.py",
           "tests/core/test_core_gradcheck_kinks.py", "tests/cli/test_cli_check.py",
           "tests/real_models/test_gradcheck_power.py"]


def _mutant(name: str, file: str, find: str, replace: str, tests: list[str], why: str) -> dict:
    return {"name": name, "file": file, "find": find, "replace": replace, "tests": tests, "why": why}


MUTANTS: list[dict] = [
    # ----------------------------------------------------------------- ONNX pointwise rules
    _mutant("selu-gamma-x1.02", POINTWISE, "_mul(ctx, _elu_slope(ctx, x, alpha), emit.scalar(ctx, gamma, x))",
            "_mul(ctx, _elu_slope(ctx, x, alpha), emit.scalar(ctx, gamma * 1.02, x))", ONNX_POINTWISE,
            "Selu's gamma 2% too large"),
    _mutant("selu-gamma-x1.03", POINTWISE, "_mul(ctx, _elu_slope(ctx, x, alpha), emit.scalar(ctx, gamma, x))",
            "_mul(ctx, _elu_slope(ctx, x, alpha), emit.scalar(ctx, gamma * 1.03, x))", ONNX_POINTWISE,
            "Selu's gamma 3% too large"),
    _mutant("selu-default-gamma-1.0", POINTWISE, '"gamma", 1.05070102214813232421875)', '"gamma", 1.0)',
            ONNX_POINTWISE, "Selu's default gamma taken as 1.0"),
    _mutant("selu-default-alpha-1.0", POINTWISE, '"alpha", 1.67326319217681884765625)', '"alpha", 1.0)',
            ONNX_POINTWISE, "Selu's default alpha taken as 1.0"),
    _mutant("erf-constant-1pc", POINTWISE, "emit.scalar(ctx, 2.0 / math.sqrt(math.pi), x)",
            "emit.scalar(ctx, 1.01 * 2.0 / math.sqrt(math.pi), x)", ONNX_POINTWISE, "Erf's 2/sqrt(pi) off by 1%"),
    # Softplus shares its registration with Abs and Sin, so the fault is put on Softplus alone
    _mutant("softplus-1pc", POINTWISE, "        return _mul(ctx, v, ctx.emit1(derivative, [node.input[0]]))\n",
            '        if op == "Softplus":\n'
            "            v = _mul(ctx, v, emit.scalar(ctx, 1.01, node.input[0]))\n"
            "        return _mul(ctx, v, ctx.emit1(derivative, [node.input[0]]))\n",
            ONNX_POINTWISE, "Softplus' derivative 1% too large"),
    _mutant("softsign-1pc", POINTWISE, 'rest = ctx.emit1("Sub", [emit.scalar(ctx, 1.0, y), ctx.emit1("Abs", [y])])',
            'rest = ctx.emit1("Sub", [emit.scalar(ctx, 1.01, y), ctx.emit1("Abs", [y])])', ONNX_POINTWISE,
            "Softsign's 1 - |y| as 1.01 - |y|"),
    _mutant("hardswish-slope-1pc", FORMS, 'return scale(ctx, ctx.emit1("Mul", [x, inside]), 1.0 / 6.0, like=x)',
            'return scale(ctx, ctx.emit1("Mul", [x, inside]), 1.01 / 6.0, like=x)', ONNX_POINTWISE,
            "HardSwish's x/6 ramp 1% steep (float32 form)"),
    _mutant("elu-alpha-1pc", POINTWISE, "_mul(ctx, exp_negative_part, emit.scalar(ctx, alpha, x))",
            "_mul(ctx, exp_negative_part, emit.scalar(ctx, alpha * 1.01, x))", ONNX_POINTWISE,
            "Elu's alpha 1% too large (alpha != 1)"),
    _mutant("elu-default-alpha", POINTWISE, 'float(ctx.attr(node, "alpha", 1.0))))',
            'float(ctx.attr(node, "alpha", 1.02))))', ONNX_POINTWISE, "Elu's default alpha 1.02"),
    _mutant("celu-alpha-1pc", POINTWISE, "emit.scalar(ctx, 1.0 / alpha, x)", "emit.scalar(ctx, 1.01 / alpha, x)",
            ONNX_POINTWISE, "Celu's 1/alpha off by 1%"),
    _mutant("leaky-relu-alpha-1pc", POINTWISE, "_blend_constants(ctx, forms.step(ctx, sign_source), 1.0, alpha)",
            "_blend_constants(ctx, forms.step(ctx, sign_source), 1.0, alpha * 1.01)", ONNX_POINTWISE,
            "LeakyRelu's slope 1% too large"),
    _mutant("hard-sigmoid-alpha-1pc", FORMS,
            'return ctx.emit1("Mul", [v, ctx.emit1("Mul", [inside, emit.scalar(ctx, factor, y)])])',
            'return ctx.emit1("Mul", [v, ctx.emit1("Mul", [inside, emit.scalar(ctx, factor * 1.01, y)])])',
            ONNX_POINTWISE, "HardSigmoid's slope 1% too large (general form)"),
    _mutant("hard-sigmoid-nchw-alpha-1pc", FORMS,
            'return scale(ctx, ctx.emit1("Mul", [v, _two_pass_box(ctx, y, 1.0)]), factor, like=y)',
            'return scale(ctx, ctx.emit1("Mul", [v, _two_pass_box(ctx, y, 1.0)]), factor * 1.01, like=y)',
            ONNX_POINTWISE, "HardSigmoid's slope 1% too large (rank-4 float32 form)"),
    _mutant("hard-sigmoid-default-alpha", POINTWISE, 'float(ctx.attr(node, "alpha", 0.2))',
            'float(ctx.attr(node, "alpha", 0.25))', ONNX_POINTWISE, "HardSigmoid's default alpha 0.25"),
    _mutant("gelu-exact-density-1pc", POINTWISE, "emit.scalar(ctx, 1.0 / math.sqrt(2.0 * math.pi), x)",
            "emit.scalar(ctx, 1.01 / math.sqrt(2.0 * math.pi), x)", ONNX_POINTWISE, "exact Gelu's x phi(x) 1% off"),
    _mutant("gelu-tanh-slope-1pc", POINTWISE, "emit.scalar(ctx, 0.5 * k, x))", "emit.scalar(ctx, 0.505 * k, x))",
            ONNX_POINTWISE, "tanh Gelu's second term 1% off"),
    # ------------------------------------------------------------------ ONNX spatial rules
    # the constant weight of the flipped-kernel adjoint; the ConvTranspose strategy reads the graph's own weight
    _mutant("conv-input-grad-1pc", CONVOLUTION, "    weight = np.asarray(weight)\n",
            "    weight = np.asarray(weight) * 1.01\n", ONNX_SPATIAL, "Conv's input gradient 1% too large"),
    _mutant("conv-transpose-pad-end-for-begin", CONVOLUTION,
            "pad_begin = pads[a]\n        axes.append(Axis(size, out,",
            "pad_begin = pads[a + n]\n        axes.append(Axis(size, out,", ONNX_SPATIAL,
            "ConvTranspose reads the end pad as the begin pad"),
    _mutant("instance-norm-default-epsilon", NORMALISATION,
            'epsilon = float(ctx.attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]\n    centred',
            'epsilon = float(ctx.attr(node, "epsilon", 1e-3))  # type: ignore[arg-type]\n    centred',
            ONNX_SPATIAL, "InstanceNormalization's default epsilon 1e-3"),
    # the Jacobian is now shared with LayerNormalization, which this fault therefore reaches too
    _mutant("instance-norm-no-projection", NORMALISATION,
            'centred = ctx.emit1("Sub", [ctx.emit1("Sub", [v, mean]), _mul(ctx, stats.x_hat, mean_along)])',
            'centred = ctx.emit1("Sub", [v, mean])', ONNX_SPATIAL,
            "normalisation Jacobian without the x-hat projection term"),
    _mutant("average-pool-divisor-1pc", POOLING, "counts = np.maximum(counts, 1)\n",
            "counts = np.maximum(counts, 1) * 1.01\n", ONNX_SPATIAL, "AveragePool's divisor 1% off"),
    _mutant("average-pool-border-divisor-full-window", POOLING,
            "return ((taps >= 0) & (taps < axis.size)).sum(axis=1)", "return np.full(axis.out, axis.kernel)",
            ONNX_SPATIAL, "AveragePool divides border windows by the full window (pads counted) by default"),
    _mutant("relu-pool-zero-windows-not-shifted", POOLING,
            'ctx.emit1("Add", [y, forms.off(ctx, y)]) if after_relu else y', "y",
            [*ONNX_SPATIAL, "tests/onnx/test_forms.py"],
            "after a Relu, all-zero max-pool windows reach the Relu's inputs (whose own mask is skipped)"),
    _mutant("resize-default-coordinates", RESIZING, '"coordinate_transformation_mode", "half_pixel"',
            '"coordinate_transformation_mode", "asymmetric"', ONNX_SPATIAL,
            "Resize's default coordinate mode asymmetric"),
    _mutant("resize-linear-weights-swapped", RESIZING, "np.add.at(matrix, (rows, low), to_high)",
            "np.add.at(matrix, (rows, low), to_low)", ONNX_SPATIAL, "linear Resize's weight on the lower cell wrong"),
    # ------------------------------------------------------------------ torch ReLU rules, fast path
    _mutant("guided-first-relu-only", "backends/_torch_rules.py",
            "if name in _RELU_NAMES and args and isinstance(args[0], torch.Tensor)",
            "if name in _RELU_NAMES and self.relu_calls == 0 and args and isinstance(args[0], torch.Tensor)",
            TORCH_RELU, "guided backprop / deconvnet rule applied at the first ReLU only"),
    _mutant("guided-without-activation-mask", "backends/_torch_rules.py", "passed = passed * (out > 0)",
            "passed = passed", TORCH_RELU, "guided backprop forgets [f > 0] (deconvnet)"),
    _mutant("fast-path-compiled-scale", "backends/torch.py", "            raw = model(xt)\n",
            "            raw = model(xt) * (1.01 if model is self._compiled else 1.0)\n", FAST_PATH,
            "the compiled model's output (and gradient) 1% too large"),
    _mutant("fast-path-compiled-sign", "backends/torch.py", "            raw = model(xt)\n",
            "            raw = -model(xt) if model is self._compiled else model(xt)\n", FAST_PATH,
            "the compiled model's output (and gradient) negated"),
    _mutant("fast-path-channels-last-scale", "backends/torch.py",
            "tensor = tensor.contiguous(memory_format=self._torch.channels_last)",
            "tensor = 1.01 * tensor.contiguous(memory_format=self._torch.channels_last)", FAST_PATH,
            "channels-last inputs scaled by 1.01"),
    # ------------------------------------------------------------------ core methods and checks
    _mutant("ssim-original-against-itself", "core/randomization.py",
            "ssim_per_sample(normal_original, normal_new, window, 11, 1.5, 1.0)",
            "ssim_per_sample(normal_original, normal_original, window, 11, 1.5, 1.0)",
            ["tests/core_sanity/test_sanity_randomization_ssim.py", "tests/core_sanity/test_sanity_checks.py"],
            "the randomisation test's SSIM of the original map with itself"),
    _mutant("gausslegendre-uniform-weights", "core/attribution.py",
            "nodes, weights = np.polynomial.legendre.leggauss(n)",
            "nodes = np.polynomial.legendre.leggauss(n)[0]", CORE, "Gauss-Legendre nodes with equal weights"),
    _mutant("vanilla-gradient-1pc", "core/attribution.py", "    return _gradients(backend, x, cotangent, rows)\n",
            "    return 1.01 * _gradients(backend, x, cotangent, rows)\n", CORE, "vanilla gradient 1% too large"),
    _mutant("gradient-x-input-abs", "core/attribution.py", "(_gradients(backend, x, cotangent, rows) * x)",
            "(_gradients(backend, x, cotangent, rows) * np.abs(x))", CORE, "gradient x |input|"),
    _mutant("smoothgrad-mean-over-n-plus-1", "core/attribution.py",
            'return (self.m2 if self.kind == "vargrad" else self.first) / n_samples',
            'return (self.m2 if self.kind == "vargrad" else self.first) / (n_samples + 1)', CORE,
            "SmoothGrad's mean divided by n + 1"),
    _mutant("smoothgrad-noise-10pc", "core/attribution.py", "noise *= sigma[segment.start:segment.stop]",
            "noise *= 1.1 * sigma[segment.start:segment.stop]", CORE, "SmoothGrad's noise 10% too wide"),
    _mutant("ig-baseline-ignored", "core/attribution.py", "attributions = difference * integral",
            "attributions = x * integral", CORE, "IG multiplies by x instead of x - baseline"),
    _mutant("ig-path-from-zero", "core/attribution.py",
            "return (base[part] + alphas[segment.copy] * difference[part]).astype(x.dtype)",
            "return (alphas[segment.copy] * x[part]).astype(x.dtype)", CORE, "IG's path starts at 0, not the baseline"),
    # ----------------------------------------------------------------- the gradient checker's own gates
    _mutant("gradcheck-kink-ratio-0.25", GC, "KINK_RATIO = 0.75", "KINK_RATIO = 0.25", CHECKER,
            "a smooth function's shrinking one-sided gap taken for a kink (its wrong gradient set aside)"),
    _mutant("gradcheck-float64-tolerances-x10", GC, "_Precision(1e-6, _ladder(-10, -5), 1e-5, 1e-4, 1e-9)",
            "_Precision(1e-6, _ladder(-10, -5), 1e-4, 1e-3, 1e-8)", CHECKER, "float64 tolerances 10x looser"),
    _mutant("gradcheck-float64-tolerances-x1000", GC, "_Precision(1e-6, _ladder(-10, -5), 1e-5, 1e-4, 1e-9)",
            "_Precision(1e-6, _ladder(-10, -5), 1e-2, 1e-1, 1e-6)", CHECKER, "float64 tolerances 1000x looser"),
    _mutant("gradcheck-float32-rtol-x5", GC, "_Precision(1e-3, _ladder(-7, -3), 2e-2, 0.3, 1e-6)",
            "_Precision(1e-3, _ladder(-7, -3), 1e-1, 0.3, 1e-6)", CHECKER,
            "float32 relative tolerance 10% (a 10% scale error passes)"),
    _mutant("gradcheck-no-gradient-direction", GC, '"gradient": [_normalised(grads)] if n_directions >= 1 else [],',
            '"gradient": [_normalised(rng.standard_normal(shape))] if n_directions >= 1 else [],', CHECKER,
            "the gradient's own direction replaced by a random one"),
    _mutant("gradcheck-no-channel-directions", GC, "for index in range(shape[axis])][:max(n_directions - 1, 0)]",
            "for index in range(shape[axis])][:0]", CHECKER, "no direction within each channel"),
    _mutant("gradcheck-no-nudge", GC, "share = 1e-3 if mode == \"directions\" else 0.0", "share = 0.0", CHECKER,
            "images checked on the kinks their flat regions make"),
    _mutant("gradcheck-uncertainty-unbounded", GC, "resolved = bool(judged.all()) and detectable < 1.0",
            "resolved = bool(judged.all())", CHECKER,
            "a family too uncertain to fail even a zero gradient counted as evidence"),
]


def _copy_repository(destination: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    site = destination / "_mutation_site" / "gradsal"
    site.mkdir(parents=True)
    for package, folder in PACKAGES.items():
        (site / package).symlink_to(destination / folder, target_is_directory=True)


def _environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy / "_mutation_site"), env.get("PYTHONPATH")]))
    env.setdefault("GRADSAL_CORPUS_DIR", str(ROOT / ".cache" / "corpus"))
    return env


def _check_imports_from(copy: Path, env: dict[str, str]) -> None:
    probe = "import gradsal.core, gradsal.backends; print(gradsal.core.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=env, check=True, capture_output=True,
                           text=True).stdout.strip()
    if not where.startswith(str(copy)):
        raise SystemExit(f"the copy's gradsal is not the one imported ({where}); mutants would test nothing")


def _run_tests(copy: Path, env: dict[str, str], tests: list[str], timeout: float) -> tuple[str, float, str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else done.stderr.strip()[-200:]
    first_failure = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), "")
    outcome = "passed" if done.returncode == 0 else "failed" if done.returncode == 1 else f"error {done.returncode}"
    return outcome, time.perf_counter() - start, first_failure or summary


def run_mutant(copy: Path, env: dict[str, str], mutant: dict, timeout: float) -> dict:
    path = copy / mutant["file"]
    original = path.read_text()
    if original.count(mutant["find"]) != 1:
        return {"name": mutant["name"], "status": "stale", "seconds": 0.0,
                "detail": f"snippet found {original.count(mutant['find'])} times in {mutant['file']}"}
    try:
        path.write_text(original.replace(mutant["find"], mutant["replace"]))
        outcome, seconds, detail = _run_tests(copy, env, mutant["tests"], timeout)
    finally:
        path.write_text(original)
    status = {"passed": "SURVIVED", "timeout": "timeout"}.get(outcome, "killed")
    return {"name": mutant["name"], "status": status, "seconds": seconds, "detail": detail}


def _select(names: list[str] | None) -> list[dict]:
    if not names:
        return MUTANTS
    known = {m["name"]: m for m in MUTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown mutant(s) {unknown}; see --list")
    return [known[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant (repeatable)")
    parser.add_argument("--baseline", action="store_true", help="first run each test set on the unmutated copy")
    parser.add_argument("--tests", action="append", metavar="PATH",
                        help="run these test files instead of each mutant's own (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant (default 900)")
    args = parser.parse_args(argv)
    chosen = _select(args.only)
    if args.tests:
        chosen = [{**m, "tests": args.tests} for m in chosen]
    if args.list:
        for m in chosen:
            print(f"{m['name']:<40} {m['file']:<38} {m['why']}\n{'':<40} tests: {' '.join(m['tests'])}")
        return 0
    with tempfile.TemporaryDirectory(prefix="gradsal-mutants-") as temporary:
        copy = Path(temporary)
        _copy_repository(copy)
        env = _environment(copy)
        _check_imports_from(copy, env)
        if args.baseline:
            for tests in sorted({tuple(m["tests"]) for m in chosen}):
                outcome, seconds, detail = _run_tests(copy, env, list(tests), args.timeout)
                print(f"baseline {outcome:<7} {seconds:6.1f}s {' '.join(tests)}  {detail}", flush=True)
                if outcome != "passed":
                    raise SystemExit("the unmutated tests do not pass: kills would mean nothing")
        results = []
        for mutant in chosen:
            result = run_mutant(copy, env, mutant, args.timeout)
            results.append(result)
            print(f"{result['status']:<9} {result['seconds']:6.1f}s  {result['name']:<40} {result['detail']}",
                  flush=True)
    killed = sum(r["status"] == "killed" for r in results)
    print(f"\n{killed} of {len(results)} mutants killed")
    for r in results:
        if r["status"] != "killed":
            print(f"  not killed: {r['name']} ({r['status']})")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
