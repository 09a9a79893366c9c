"""Planted faults: each is applied alone to a checkout, the tests that guard it run, and the fault
must make them fail (issue 25: "a test earns its place by failing").

    python benchmarks/faults/planted.py CHECKOUT [--only ID ...] [--out results.md]

CHECKOUT is a clean git checkout with the package installed editable in its .venv (a worktree of
this repository); each fault is reverted with `git checkout -- FILE` after its run. A fault
"survives" when its tests pass with it planted.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

# (id, area, file, old text, new text, test selection)
FAULTS = [
    ("amd-strict", "algebra", "unioncam/algebra/amd.py", "W = xp.where(gradients >= t, gradients, zeros)",
     "W = xp.where(gradients > t, gradients, zeros)", "tests/test_oracles.py tests/test_algebra.py tests/test_reference.py"),
    ("percentile-nearest", "algebra", "unioncam/algebra/amd.py", "    lo = int(pos // 1)\n",
     "    lo = int(round(pos))\n", "tests/test_oracles.py tests/test_algebra.py"),
    ("minmax-epsilon", "algebra", "unioncam/algebra/maps.py", "    nonconst = rng > 0\n",
     "    nonconst = rng > 1e-5\n", "tests/test_oracles.py tests/test_algebra.py"),
    ("near-constant-is-constant", "algebra", "unioncam/algebra/maps.py",
     "return xp.max(maps, axis=(-2, -1)) == xp.min(maps, axis=(-2, -1))",
     "return xp.max(maps, axis=(-2, -1)) - xp.min(maps, axis=(-2, -1)) < 1e-5",
     "tests/test_oracles.py tests/test_algebra.py"),
    ("duplicates-across-batch", "algebra", "unioncam/algebra/fusion.py",
     "        for b in np.unique(b_idx):\n            pos = np.flatnonzero(b_idx == b)\n"
     "            source[pos] = pos[to_numpy(duplicate_masks(activations[b, xp.asarray(k_idx[pos], device=dev)]))]\n",
     "        source = to_numpy(duplicate_masks(activations[xp.asarray(b_idx, device=dev), "
     "xp.asarray(k_idx, device=dev)]))\n", "tests/test_oracles.py tests/test_algebra.py"),
    ("ams-tie-picks-dr", "algebra", "unioncam/algebra/fusion.py", "pick = beta_dr > beta_reg",
     "pick = beta_dr >= beta_reg", "tests/test_algebra.py tests/test_reference.py tests/test_oracles.py"),
    ("region-map-no-relu", "algebra", "unioncam/algebra/weights.py", "    return xp.where(L > 0, L, xp.zeros_like(L))\n",
     "    return L\n", "tests/test_algebra.py tests/test_reference.py tests/test_oracles.py"),
    ("gradcam-sum", "algebra", "unioncam/algebra/weights.py",
     "return namespace(gradients).mean(gradients, axis=(-2, -1))",
     "return namespace(gradients).sum(gradients, axis=(-2, -1)) ** 2", "tests/test_baselines.py"),
    ("estimator-unweighted", "algebra", "unioncam/algebra/budget.py", "wts = 1.0 / np.maximum(dd, 1e-12)",
     "wts = np.ones_like(dd)", "tests/test_oracles.py tests/test_budgets.py"),
    ("estimator-exact-by-distance", "algebra", "unioncam/algebra/budget.py", "        exact = equal >= 0\n",
     "        exact = dd[:, 0] == 0.0\n        equal = np.where(exact, idx[:, 0], -1)\n",
     "tests/test_oracles.py tests/test_budgets.py"),
    ("no-padding", "runtime", "unioncam/pipeline.py",
     "out = passes.scores(image, _pad(xp, chunk, size) if passes.pad else chunk, int(cls[b]), stage)",
     "out = passes.scores(image, chunk, int(cls[b]), stage)", "tests/test_pipeline.py"),
    ("cpu-remainder-padded", "runtime", "unioncam/pipeline.py",
     "tail = stage == \"region\" and getattr(passes, \"tail\", False)", "tail = False", "tests/test_pipeline.py"),
    ("padding-scores-kept", "runtime", "unioncam/pipeline.py", "            parts.append(out[:n])\n",
     "            parts.append(out[-n:])\n", "tests/test_pipeline.py tests/test_runtime.py"),
    ("class-ignored", "runtime", "runtime/passes.py",
     "classes = np.where(requested < 0, logits.argmax(axis=1), requested).astype(np.int64)",
     "classes = logits.argmax(axis=1).astype(np.int64)", "tests/test_runtime.py"),
    ("threads-ignored", "runtime", "runtime/backends/onnxruntime/loader.py", "so.intra_op_num_threads = self.threads or (os.cpu_count() or 1)",
     "so.intra_op_num_threads = os.cpu_count() or 1", "tests/test_runtime.py tests/test_bench.py tests/test_pipeline.py"),
    ("fusion-in-variant", "runtime", "runtime/explainer.py", "make(MASKED_ONNX, False)]", "make(masked, tf32)]",
     "tests/test_budgets.py"),
    ("buffer-aliases-input", "runtime", "runtime/backends/onnxruntime/runner.py",
     "buf = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), value.dtype, self._ort_device, 0)",
     "buf = ort.OrtValue.ortvalue_from_numpy(value, self._ort_device, 0)", "tests/test_runners.py tests/test_pipeline.py"),
    ("theta-not-passed", "runtime", "runtime/explainer.py",
     "return pipeline.PassOptions(theta=self.theta,", "return pipeline.PassOptions(theta=10.0,",
     "tests/test_runtime.py tests/test_pipeline.py"),
    ("masked-graph-class-0", "export", "export/graphs.py",
     "return class_probs(self.model, x, class_idx.reshape(B, 1).expand(B, M).reshape(B * M)).reshape(B, M)",
     "return class_probs(self.model, x, torch.zeros(B * M, dtype=torch.int64)).reshape(B, M)",
     "tests/test_export.py tests/test_runtime.py"),
    ("fp16-no-repair", "export", "export/precision.py", "    repair_graph(half)\n", "", "tests/test_zoo.py -k fp16"),
    ("precision-no-load-check", "export", "export/precision.py",
     "        check_loads(tmp)  # never written as done unless ONNX Runtime accepts it\n", "",
     "tests/test_zoo.py -k refuses"),
    ("export-replaces-user-folder", "export", "unioncam/artifacts.py", "    if foreign:\n", "    if False:\n",
     "tests/test_nothing_lost.py"),
    ("e2e-theta-fixed", "export", "export/end_to_end.py", "L_den = algebra.denoised_map(A, G, self.theta)",
     "L_den = algebra.denoised_map(A, G, 10.0)", "tests/test_end_to_end.py"),
    ("damaged-jpeg-explained", "cli", "unioncam/image_io.py", "    if damaged and not lenient:\n",
     "    if False:\n", "tests/test_hostile_images.py"),
    ("exif-ignored", "cli", "unioncam/image_io.py", "_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR",
     "_FLAGS = cv2.IMREAD_UNCHANGED", "tests/test_hostile_images.py"),
    ("float-image-clipped", "cli", "unioncam/image_io.py", "        if lo < 0.0 or hi > 1.0:\n",
     "        img = np.clip(img, 0.0, 1.0)\n        if False:\n", "tests/test_hostile_images.py"),
    ("foreign-masked-graph", "runtime", "runtime/explainer.py",
     "            self.passes.check_masked_graphs(region_too=masked != MASKED_ONNX)\n", "",
     "tests/test_nothing_lost.py"),
    ("user-temporaries-deleted", "cli", "unioncam/atomic.py", "        if not m or m[\"host\"] != _host() or not entry.is_file():\n",
     "        if not entry.name.endswith(\".tmp\"):\n", "tests/test_nothing_lost.py"),
    ("resume-by-name", "cli", "unioncam/outputs.py", "        if rep.get(\"image_sha256\") != image_digest(image):\n",
     "        if False:\n", "tests/test_nothing_lost.py"),
    ("reshape-class-token-kept", "export", "unioncam/methods/reshape.py",
     "        return out[:, c:].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)\n",
     "        return out[:, :out.shape[1] - c].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)\n",
     "tests/test_vit.py"),
    ("reshape-grid-transposed", "export", "unioncam/methods/reshape.py",
     "        return out[:, c:].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)\n",
     "        return out[:, c:].transpose(1, 2).reshape(out.shape[0], out.shape[2], w, h).transpose(2, 3)\n",
     "tests/test_vit.py"),
    ("usage-exit-1", "cli", "unioncam/cli/__init__.py", "return 2 if isinstance(e, UsageError) else 1", "return 1",
     "tests/test_cli.py tests/test_nothing_lost.py tests/test_hostile_inputs.py"),
    ("cli-class-ignored", "cli", "unioncam/cli/explain.py", "return (lambda x: runtime(x, args.class_idx)), layer",
     "return (lambda x: runtime(x, None)), layer", "tests/test_cli.py tests/test_hostile_inputs.py"),
    ("cache-key-weights-name", "cache", "unioncam/cache.py", "        wkey = sha256_file(weights)\n",
     "        wkey = Path(weights).name\n", "tests/test_nothing_lost.py tests/test_cli.py tests/test_any_model.py"),
    ("cache-key-no-size", "cache", "unioncam/cache.py",
     "key = json.dumps([model, layer, list(input_size), wkey, __version__, torch_version])",
     "key = json.dumps([model, layer, wkey, __version__, torch_version])",
     "tests/test_nothing_lost.py tests/test_cli.py tests/test_any_model.py"),
    # Issue 26, what was left (tests/test_clear_failures.py, tests/test_first_use.py).
    ("stdout-strict", "cli", "unioncam/cli/__init__.py", 'stream.reconfigure(errors="backslashreplace")', "pass",
     "tests/test_clear_failures.py -k utf8"),
    ("unreadable-folder-raises", "cli", "unioncam/outputs.py",
     "            except OSError:\n                found = []", "            except ValueError:\n                found = []",
     "tests/test_clear_failures.py -k unreadable"),
    ("long-stem-kept", "cli", "unioncam/outputs.py", "    if len(raw) + _SUFFIX_ROOM <= name_max:", "    if True:",
     "tests/test_clear_failures.py -k too_long"),
    ("factory-args-unchecked", "cli", "unioncam/models/factory.py", "    if required:\n        raise ModelLoadError",
     "    if False:\n        raise ModelLoadError", "tests/test_clear_failures.py -k factory"),
    ("opset-unchecked", "export", "unioncam/validation.py", "    if not MIN_OPSET <= value <= newest:",
     "    if value < 1:", "tests/test_clear_failures.py -k opset"),
    ("full-disk-no-path", "export", "unioncam/artifacts.py", "            raise write_error(e, final) from None",
     "            raise", "tests/test_clear_failures.py -k full_disk"),
    ("no-header-ceiling", "images", "unioncam/image_io.py", "    if size is None or size[0] * size[1] <= limit:",
     "    if True:", "tests/test_clear_failures.py -k ceiling"),
    ("manifest-recursion", "cache", "unioncam/artifacts.py", "ValueError, RecursionError) as e:", "ValueError) as e:",
     "tests/test_clear_failures.py -k manifest"),
    ("cache-entry-not-owned", "cache", "unioncam/export_cache.py", "reshape=reshape, owned=True)",
     "reshape=reshape, owned=False)", "tests/test_clear_failures.py -k once"),
    ("codec-lines-always", "images", "unioncam/image_io.py", "    if said and verbose():", "    if said:",
     "tests/test_clear_failures.py -k verbose"),
    ("class-range-after-export", "cli", "unioncam/export_cache.py",
     "            check_class_option(req.class_idx, output_classes(model, size), by_name=req.class_by_name)",
     "            pass", "tests/test_clear_failures.py -k bad_class"),
    ("one-logit-accepted", "algebra", "unioncam/methods/passes.py", "    if out.shape[1] < 2:", "    if out.shape[1] < 1:",
     "tests/test_clear_failures.py -k factory"),
    ("eval-method-by-method", "cli", "unioncam/cli/eval.py",
     "        for method, exp in ex.explain_methods(x, args.methods).items():",
     "        for method, exp in ((m, ex(x, method=m)) for m in args.methods):", "tests/test_first_use.py -k eval_runs"),
    ("shared-passes-differ", "runtime", "unioncam/pipeline.py",
     "            out[m] = Explanation.from_map(m, algebra.normalized(L_reg, (H, W)),",
     "            out[m] = Explanation.from_map(m, algebra.normalized(L_reg * L_reg, (H, W)),", "tests/test_first_use.py -k alone"),
    ("bar-total-upper-bound", "runtime", "unioncam/pipeline.py", "                bar.total = int(maps.shape[0])\n",
     "                pass\n", "tests/test_first_use.py -k progress"),
    ("stats-lists", "cli", "unioncam/outputs.py", "(v[0] if k in PER_IMAGE_STATS and isinstance(v, list) else v)",
     "v", "tests/test_first_use.py -k scalars"),
    ("interval-three-decimals", "cli", "unioncam/metrics.py",
     "    decimals = max(0, 1 - int(math.floor(math.log10(abs(half_width)))))", "    decimals = 3",
     "tests/test_first_use.py -k rounding"),
    ("tiles-squashed", "cli", "unioncam/cli/eval.py", "    scale = side / max(h, w)\n    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))",
     "    nh, nw = side, side", "tests/test_first_use.py -k aspect"),
    ("percentiles-unmarked", "cli", "unioncam/cli/bench_report.py",
     '    return _f(stage[key]) + ("*" if stage.get("n", 0) < RELIABLE_FROM.get(key, 0) else "")',
     "    return _f(stage[key])", "tests/test_first_use.py -k bench"),
    ("warning-at-load", "cli", "unioncam/cli/common.py", "            warn_untrained(args.model)  # now", "            pass  # now",
     "tests/test_first_use.py -k untrained"),
    ("threads-checked-late", "cli", "unioncam/cli/common.py", "        if args.threads is not None:\n            check_threads(args.threads)",
     "        if False:\n            check_threads(args.threads)", "tests/test_first_use.py -k usage_errors"),
    ("threads-not-passed", "cli", "unioncam/cli/eval.py", "                                     threads=args.threads)",
     "                                     threads=None)", "tests/test_first_use.py -k threads_reach"),
    ("ray-lines-shown", "cli", "unioncam/distributed/dataset.py",
     "        if said and said[0].strip() and (verbose() or failed):", "        if said and said[0].strip():",
     "tests/test_distributed.py -k killed"),
    # A transposed grid is not one an overlay can see (the masks move with the maps, so the region
    # map still lands on the object); the oracle tests of reshape-grid-transposed catch it.
    ("vit-auto-reshape-dropped", "export", "unioncam/export_cache.py", "    return name, reshape or auto\n",
     "    return name, reshape\n", "tests/test_vit.py -k sits_on_the_object"),
]


# Issue 32: every range check at its boundary, the first invalid value admitted (tests/test_boundaries.py).
BOUNDARY_TESTS = "tests/test_boundaries.py"
FAULTS += [
    ("theta-edges", "boundary", "unioncam/validation.py", "not 0.0 <= value <= 100.0", "not -1e-9 <= value <= 100.0 + 1e-9",
     BOUNDARY_TESTS),
    ("class-option-last", "boundary", "unioncam/validation.py", "if not 0 <= class_idx < num_classes:",
     "if not 0 <= class_idx <= num_classes:", BOUNDARY_TESTS),
    ("runtime-class-last", "boundary", "unioncam/validation.py", "        if not 0 <= v < limit:",
     "        if not 0 <= v <= limit:", BOUNDARY_TESTS),
    ("class-index-negative", "boundary", "unioncam/classes.py", "        if value < 0:", "        if value < -1:",
     BOUNDARY_TESTS),
    ("input-side", "boundary", "unioncam/validation.py", "        if v > MAX_INPUT_SIDE:", "        if v > MAX_INPUT_SIDE + 1:",
     BOUNDARY_TESTS),
    ("opset-newest", "boundary", "unioncam/validation.py", "if not MIN_OPSET <= value <= newest:",
     "if not MIN_OPSET <= value <= newest + 1:", BOUNDARY_TESTS),
    ("threads-ceiling", "boundary", "unioncam/validation.py", "    if value > limit:\n        raise InvalidInputError(f\"threads=",
     "    if value > limit + 1:\n        raise InvalidInputError(f\"threads=", BOUNDARY_TESTS),
    ("batch-ceiling", "boundary", "unioncam/validation.py", "    if batch_size > limit:", "    if batch_size > limit + 1:",
     BOUNDARY_TESTS),
    ("positive-int-zero", "boundary", "unioncam/validation.py", "or not isinstance(value, (int, np.integer)) or value < 1:",
     "or not isinstance(value, (int, np.integer)) or value < 0:", BOUNDARY_TESTS),
    ("count-ceiling", "boundary", "unioncam/validation.py", "if not minimum <= value <= ceiling:",
     "if not minimum <= value <= ceiling + 1:", BOUNDARY_TESTS),
    ("duration-ceiling", "boundary", "unioncam/validation.py", "0.0 < value <= MAX_DURATION_S)",
     "0.0 < value <= MAX_DURATION_S * (1 + 1e-9))", BOUNDARY_TESTS),
    ("steps-pixels", "boundary", "unioncam/validation.py", 'return check_count(steps, "steps", H * W)',
     'return check_count(steps, "steps", H * W + 1)', BOUNDARY_TESTS),
    ("gpus-fraction", "boundary", "unioncam/validation.py", "value > 0 and (value <= 1 or value.is_integer())",
     "value > 0 and (value <= 1 + 1e-9 or value.is_integer())", BOUNDARY_TESTS),
    ("port-65536", "boundary", "unioncam/distributed/dataset.py", "if not 1 <= int(port) <= 65535:",
     "if not 1 <= int(port) <= 65536:", BOUNDARY_TESTS),
    ("manifest-side", "boundary", "unioncam/artifacts.py", "max(v) <= MAX_INPUT_SIDE)", "max(v) <= MAX_INPUT_SIDE + 1)",
     BOUNDARY_TESTS),
    ("manifest-one-class", "boundary", "unioncam/artifacts.py", '("num_classes", lambda v: type(v) is int and v > 1)',
     '("num_classes", lambda v: type(v) is int and v > 0)', BOUNDARY_TESTS),
    ("graph-class-status", "boundary", "export/end_to_end.py", "(class_idx < self.num_classes)",
     "(class_idx <= self.num_classes)", BOUNDARY_TESTS),
    ("graph-pixel-status", "boundary", "export/end_to_end.py", "(clean.reshape(-1).amax(dim=0) <= 1)",
     "(clean.reshape(-1).amax(dim=0) <= 1.0001)", BOUNDARY_TESTS),
    ("pixel-ceiling", "boundary", "unioncam/image_io.py", "if size is None or size[0] * size[1] <= limit:",
     "if size is None or size[0] * size[1] <= limit + 1:", BOUNDARY_TESTS),
    ("byte-ceiling", "boundary", "unioncam/image_io.py", "            if length > limit:", "            if length > limit + 1:",
     BOUNDARY_TESTS),
    ("provider-cpu", "boundary", "unioncam/validation.py", '    if out and device == "cpu":', '    if out and device == "gpu":',
     BOUNDARY_TESTS),
]


# Issues 31-33: the rules behind the hostile run's findings, each fault alone.
FAULTS += [
    ("claim-nothing", "ownership", "unioncam/ownership.py", "    ledgers: dict[Path, Ledger] = {}\n    for p in paths:",
     "    ledgers: dict[Path, Ledger] = {}\n    for p in []:", "tests/test_ownership.py"),
    ("ledger-not-written", "ownership", "unioncam/atomic.py", "            ownership.record(path, digest or _sha256(tmp))",
     "            pass", "tests/test_ownership.py"),
    ("fingerprints-unchecked", "identity", "runtime/explainer.py",
     "            check_export(self.directory, self.manifest, [GRADIENT_ONNX, masked, MASKED_ONNX])",
     "            pass", "tests/test_graph_identity.py"),
    ("int8-numeric-identity", "identity", "unioncam/validation.py", '"int8": None}', '"int8": 2e-2}',
     "tests/test_graph_identity.py"),
    ("variant-source-unchecked", "identity", "unioncam/graph_identity.py",
     'if p.get(SOURCE) != fp32 or record.get("source_sha256") != fp32:', "if False:", "tests/test_graph_identity.py"),
    ("vit-by-name", "vit", "unioncam/models/target_layer.py",
     "norms = [r for r in records if is_tokens(r[4]) and r[1] in norms_by_type and r[3] in fed]",
     'norms = [r for r in records if is_tokens(r[4]) and r[1].endswith("norm1")]', "tests/test_vit_structure.py"),
    ("reshape-unchecked", "shapes", "export/exporter.py", "        reshape.check_fits(layer_name, raw[0], (H, W))",
     "        pass", "tests/test_first_findings.py -k reshape"),
    ("unbounded-read", "bounds", "unioncam/image_io.py", "            if length > limit:\n",
     "            if False:\n", "tests/test_first_findings.py -k 'sparse_file or larger_than'"),
    ("connect-only", "bounds", "unioncam/distributed/dataset.py", "            sock.sendall(_H2_PREFACE)\n",
     "            return\n", "tests/test_first_findings.py -k port"),
    ("progress-on-files", "noise", "unioncam/progress.py", "file=sys.stderr, disable=None", "file=sys.stderr, disable=False",
     "tests/test_first_findings.py -k progress"),
    ("serial-resume-off", "first-use", "unioncam/cli/explain.py", "    if not args.overwrite:\n", "    if False:\n",
     "tests/test_ownership.py -k own_outputs"),
    ("ambiguous-class-first", "messages", "unioncam/classes.py", "    if len(matches) == 1:", "    if len(matches) >= 1:",
     "tests/test_first_findings.py -k ambiguous"),
    ("usage-after-load", "usage", "unioncam/cli/export.py", '    with as_usage_error("--chunk"):\n        check_positive_int(args.chunk, "--chunk")\n',
     "", "tests/test_first_findings.py -k usage_errors"),
    ("ray-unbounded-restarts", "ray", "unioncam/distributed/dataset.py", "ACTOR_RESTARTS = 3", "ACTOR_RESTARTS = 0",
     "tests/test_multinode.py -k lost_mid_run"),
]


def plant(root: Path, fault) -> None:
    fid, _, rel, old, new, _ = fault
    path = root / rel
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{fid}: the text to replace occurs {text.count(old)} times in {rel}")
    path.write_text(text.replace(old, new))


def run(root: Path, fault, timeout: int) -> tuple[str, float, str]:
    fid, _, rel, _, _, tests = fault
    plant(root, fault)
    t = time.perf_counter()
    try:
        proc = subprocess.run([str(root / ".venv/bin/python"), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "-p", "no:logging", *shlex.split(tests)], cwd=root, capture_output=True, text=True,
                              timeout=timeout)
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        verdict = "caught" if proc.returncode != 0 else "SURVIVED"
        detail = failed[0].split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ") if failed else \
            (proc.stdout.strip().splitlines() or ["?"])[-1]
    except subprocess.TimeoutExpired:
        verdict, detail = "timeout", f"over {timeout} s"
    finally:
        subprocess.run(["git", "checkout", "--", rel], cwd=root, check=True)
    return verdict, time.perf_counter() - t, detail


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout", type=Path)
    ap.add_argument("--only", nargs="+")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    root = args.checkout.resolve()
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                      text=True).stdout.strip():
        raise SystemExit(f"{root} has uncommitted changes; plant faults in a clean checkout")
    rows = []
    for fault in FAULTS:
        if args.only and fault[0] not in args.only:
            continue
        verdict, seconds, detail = run(root, fault, args.timeout)
        rows.append((fault[0], fault[1], fault[2], verdict, detail, seconds))
        print(f"{fault[0]:30s} {verdict:9s} {seconds:6.0f} s  {detail}", flush=True)
    survived = sum(r[3] != "caught" for r in rows)
    lines = [f"{len(rows)} faults planted, {survived} survived.", "",
             "| fault | area | file | verdict | first failing test | s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | `{r[2]}` | {r[3]} | `{r[4]}` | {r[5]:.0f} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
