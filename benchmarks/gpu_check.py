"""The CUDA target on a real GPU: correctness on every coverage model, latency beside PyTorch.

Two steps, because GPU machines are lent for minutes and carry no compiler toolchain of ours:

1. Here (TVM's compiler and nvcc installed, no GPU needed):
   `python -m honer.benchmarks.gpu_check build --out .gpu_bundle`
   compiles every random-weight coverage model for `cuda` (fp32, batch 1), the ViT and BERT
   at batch 1 and 8 in fp16 (with and without CUDA graphs) and fp32, and the acceleration
   passes on the GPU (weight-only int8/int4, 2:4 on mma.sp, token merging), each checked
   against its own graph interpreted; `--select` bundles a subset. Each model's weights are
   first set by `fill_weights`, a rule that depends only on parameter names and shapes, so the
   GPU machine can rebuild the very same torch model; the bundle then carries each artifact
   without its weight file plus a recipe naming the torch parameter (and layout, or the
   quantization or pruning derived from it) behind every stored weight, the example
   inputs, and a runtime-only TVM for the GPU machine's Python. It stays a few MB.
2. On the GPU machine: `benchmarks/gpu_check.sh .gpu_bundle` installs that runtime, rebuilds the
   weight files from the recipes (`honer.load` then checks every byte against the manifest's
   sha256), runs each artifact against PyTorch eager on the GPU, and times honer (kernels
   only: inputs already on the device), eager and `torch.compile` side by side, median of 50
   runs after warm-up; cases marked `profile` add each kernel's GPU time per run, honer's and
   torch.compile's (CUPTI, through torch.profiler). Results: benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    model: str  # a zoo name or one of EXTRA_MODELS
    kwargs: dict[str, int] = field(default_factory=dict)
    precision: str = "fp32"
    compare_compile: bool = False  # also timed against torch.compile
    passes: tuple[str, ...] = ()
    graphs: bool = False  # the target's CUDA-graph option
    mma_tile: str = "auto"  # the target's tensor-core tile option
    sparse_tile: str = "auto"  # the target's 2:4 tile option
    profile: bool = False  # also time each kernel (CUPTI, through torch.profiler)

    @property
    def id(self) -> str:
        tags = [p.replace(":", "_").replace("=", "").replace(",", "_") for p in self.passes]
        return "_".join([self.model, *(f"{k}{v}" for k, v in self.kwargs.items()), *tags,
                         self.precision] + (["graphs"] if self.graphs else [])
                        + ([f"tile{self.mma_tile}"] if self.mma_tile != "auto" else [])
                        + ([f"sparse{self.sparse_tile}"] if self.sparse_tile != "auto" else []))

    @property
    def target(self) -> str:
        return (f"cuda:precision={self.precision},mma_tile={self.mma_tile},"
                f"sparse_tile={self.sparse_tile}"
                + (",graphs=on" if self.graphs else ""))


INT8 = "weight_quant:bits=8"
INT4 = "weight_quant:bits=4,group=64"
SPARSE = "sparse24:form=compressed"
LAYER_SHAPES = (("linear_4096", 64), ("linear_4096", 256), ("linear_8192", 64),
                ("linear_8192", 256))
W8A8 = "w8a8"  # calibrated on the example inputs (random weights: a check of the kernels)
# fp16 first: torch.compile is timed only while the run is young (it compiles for seconds)
CASES: list[Case] = [
    *(Case(name, {"batch": batch}, "fp16", True, graphs=True, profile=batch == 8)
      for name in ("vit_deit_tiny", "bert_minilm") for batch in (1, 8)),
    # the tensor-core tile: dlight's fixed 128x128 beside the problem-sized choice above
    *(Case("bert_minilm", {"batch": 8}, "fp16", graphs=True, mma_tile=t, profile=True)
      for t in ("128x128", "32x64")),
    Case("vit_deit_tiny", {"batch": 1}, "fp16", True),
    Case("vit_deit_tiny", {"batch": 8}, "fp16", True),
    Case("bert_minilm", {"batch": 1}, "fp16", True),
    Case("bert_minilm", {"batch": 8}, "fp16", True),
    # the acceleration passes on the GPU: weight-only int8/int4 where weights dominate (one
    # token through a 4-layer SmolLM2-sized Llama, one large linear layer), token merging
    Case("llama_smollm2", {"seq": 1, "layers": 4}, "fp16", True),
    Case("llama_smollm2", {"seq": 1, "layers": 4}, "fp16", False, (INT8,)),
    Case("llama_smollm2", {"seq": 1, "layers": 4}, "fp16", False, (INT4,)),
    Case("linear_4096", {"batch": 1}, "fp16", True),
    Case("linear_4096", {"batch": 1}, "fp16", False, (INT8,)),
    Case("linear_4096", {"batch": 1}, "fp16", False, (INT4,)),
    Case("linear_4096", {"batch": 1}, "fp16", False, (SPARSE,)),
    Case("linear_4096", {"batch": 1}, "fp16", False, (SPARSE + ",bits=8",)),
    # 2:4 at many tokens (the tiled mma.sp kernel) beside dense fp16, and a larger layer, in
    # CUDA graphs (kernel time, not launch overhead: the sparse layer is one kernel more)
    *(Case(name, {"batch": batch}, "fp16", False, passes, graphs=True,
           profile=(name, batch) == ("linear_4096", 256))
      for name, batch in LAYER_SHAPES for passes in ((), (SPARSE,), (SPARSE + ",bits=8",))),
    # block shapes of the tiled 2:4 kernel (codegen.sparse_tc.TILES, not imported: the GPU
    # machine has a runtime-only TVM): the pipelined ones, and the register-staged ones that
    # were fastest before them (the others lost to deeper stages at every shape)
    *(Case(name, {"batch": batch}, "fp16", False, (SPARSE,), graphs=True, sparse_tile=tile)
      for name, batch in LAYER_SHAPES
      for tile in ("128x64x128p3", "128x64x64p4", "128x64x64p3", "64x64x128p3", "64x64x64p4",
                   "128x64x128", "64x64x128")),
    # and dense fp16 with the tensor-core tiles the automatic choice passed over
    *(Case(name, {"batch": 256}, "fp16", graphs=True, mma_tile=tile)
      for name in ("linear_4096", "linear_8192") for tile in ("128x128", "64x128")),
    # bfloat16 compute (weights kept in float32, cast on the device: numpy has no bfloat16)
    *(Case(name, {"batch": 8}, "bf16", graphs=True) for name in ("vit_deit_tiny", "bert_minilm")),
    # W8A8 on the int8 tensor cores (int8_tc.py), the float parts in fp16; in fp32 the
    # integer products leave the interpreter's result exact but for float rounding
    *(Case(name, {"batch": batch}, "fp16", False, (W8A8,), graphs=True, profile=batch == 8)
      for name in ("vit_deit_tiny", "bert_minilm") for batch in (1, 8)),
    Case("vit_deit_tiny", {"batch": 8}, "fp32", False, (W8A8,), graphs=True),
    Case("vit_deit_tiny", {"batch": 8}, "fp16", False, ("tome:r=8",)),
    Case("mlp"),
    Case("conv_bn_relu_cnn"),
    Case("resnet18"),
    Case("gpt2_6l"),
    Case("llama_smollm2"),
    Case("vit_deit_tiny", {"batch": 1}, "fp32", True),
    Case("vit_deit_tiny", {"batch": 8}),
    Case("bert_minilm", {"batch": 1}, "fp32", True),
    Case("bert_minilm", {"batch": 8}),
]
LAYOUTS = {"as-is": lambda a: a, "transposed": lambda a: a.T,
           "HWIO": lambda a: a.transpose(2, 3, 1, 0)}


def fill_weights(model: Any) -> Any:
    """Sets every parameter from a generator seeded by its name: matrices uniform in
    +-1/sqrt(fan_in), 1-D scales around 1, biases around 0. Independent of the library
    versions' own initializers, so two machines build bit-identical models."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if p.ndim >= 2:
                bound = 1.0 / np.sqrt(np.prod(p.shape[1:]))
                data = rng.uniform(-bound, bound, p.shape)
            elif name.endswith("weight"):
                data = 1.0 + 0.1 * rng.standard_normal(p.shape)
            else:
                data = 0.02 * rng.standard_normal(p.shape)
            p.copy_(torch.from_numpy(data.astype(np.float32)))
    return model


def linear(features: int, batch: int = 1) -> tuple[Any, tuple]:
    """One square linear layer: at one token, the shape where weight bytes decide the speed."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(features, features), (torch.randn(batch, features),)


EXTRA_MODELS = {"linear_4096": functools.partial(linear, 4096),
                "linear_8192": functools.partial(linear, 8192)}


def make_model(name: str, kwargs: dict[str, int]) -> tuple[Any, tuple]:
    """The model with `fill_weights`, and its example inputs, the float ones replaced by
    `reproducible` values (so the bundle carries how to make them, not the data)."""
    import torch

    from ..tests.models.zoo import ZOO

    model, inputs = {**ZOO, **EXTRA_MODELS}[name](**kwargs)
    inputs = tuple(torch.from_numpy(reproducible(tuple(x.shape), i))
                   if x.is_floating_point() else x for i, x in enumerate(inputs))
    return fill_weights(model).eval(), inputs


def reproducible(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values in [-2, 2) from an integer hash (splitmix64) of each element's index:
    bitwise the same on every machine and library version, unlike a float RNG's stream."""
    z = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(seed) * np.uint64(
        0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    unit = (z >> np.uint64(40)).astype(np.float32) / np.float32(2**24)  # 24 bits: exact
    return (unit * np.float32(4) - np.float32(2)).reshape(shape)


def saved_inputs(case_dir: Path, inputs: tuple) -> None:
    """The integer inputs (token ids, masks) as data; the float ones are `reproducible`."""
    np.savez(case_dir / "inputs.npz", **{f"arr_{i}": x.numpy() for i, x in enumerate(inputs)
                                          if not x.is_floating_point()})


def load_inputs(case_dir: Path, made: tuple) -> list[np.ndarray]:
    """The example inputs: those saved_inputs kept, and the float ones of `made` (the inputs
    make_model returned on this machine)."""
    npz = np.load(case_dir / "inputs.npz")
    return [npz[f"arr_{i}"] if f"arr_{i}" in npz.files else x.numpy()
            for i, x in enumerate(made)]


# ---------------------------------------------------------------- step 1: build (no GPU)

def build(out: Path, python_version: str, only: set[str] | None = None,
          select: list[str] | None = None) -> None:
    """`only`: rebuild just these case ids, keeping the others already in `out`; `select`:
    the bundle holds only the cases whose id one of these regular expressions matches (a
    plain string: contains it)."""
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "cases.json"
    kept = {c["id"]: c for c in json.loads(listing.read_text())} \
        if only and listing.exists() else {}
    cases = []
    for case in CASES:
        if select and not any(re.search(s, case.id) for s in select):
            continue
        if only and case.id not in only and case.id in kept:
            cases.append(kept[case.id])
        else:
            cases.append(build_case(out, case))
        (out / "cases.json").write_text(json.dumps(cases, indent=1))
    probes = [build_probe(out, name, kwargs) for name, kwargs in PROBES
              if not select or any(re.search(s, "probe_" + Case(name, kwargs).id)
                                   for s in select)]
    (out / "probes.json").write_text(json.dumps(probes, indent=1))
    pack_runtime(out / "runtime", python_version)


def saved_once(out: Path, array: np.ndarray) -> str:
    """`array` saved under the bundle's expected/, named by its content: cases that differ only
    in a kernel option share their reference (an 8192-wide output is 8 MB)."""
    import hashlib

    data = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{data.dtype}{data.shape}".encode() + data.tobytes())
    name = f"expected/{digest.hexdigest()[:16]}.npy"
    (out / "expected").mkdir(exist_ok=True)
    np.save(out / name, data)
    return name


def build_case(out: Path, case: Case) -> dict[str, Any]:
    import honer
    from honer.ir import interpret

    start = time.perf_counter()
    model, inputs = make_model(case.model, case.kwargs)
    # passes that calibrate (W8A8) get the example inputs
    calibration = [tuple(x.numpy() for x in inputs)] if W8A8 in case.passes else None
    compiled = honer.compile(model, inputs, target=case.target, passes=list(case.passes),
                             calibration=calibration)
    recipe = save_case(out / case.id, compiled, model, inputs, derivations(case.passes))
    expected = None
    if case.passes:  # the reference for an approximate model is its own graph, interpreted
        expected = saved_once(out, interpret(compiled.graph, [x.numpy() for x in inputs])[0])
    row = {"id": case.id, "model": case.model, "kwargs": case.kwargs,
           "precision": case.precision, "passes": list(case.passes),
           "compare_compile": case.compare_compile, "profile": case.profile, "recipe": recipe,
           "expected": expected,
           "build_s": round(time.perf_counter() - start, 1),
           "kernels": compiled.report["build"]["schedule"]["kernels"]}
    print(f"{case.id}: built in {row['build_s']} s, "
          f"{sum(1 for r in recipe if 'key' in r)}/{len(recipe)} weights by recipe", flush=True)
    return row


def derivations(passes: tuple[str, ...]) -> list[list]:
    """The deterministic weight rewrites among `passes` (round-to-nearest quantization,
    2:4 pruning by magnitude): their weights are rebuilt on the GPU machine from the torch
    parameters by the same functions, instead of shipped. ["quant", bits, group] or
    ["sparse24", bits]."""
    from honer.passes import sparse24, weight_quant

    found = []
    for spec in passes:
        name, _, opts = spec.partition(":")
        kv = dict(o.split("=") for o in opts.split(",") if o)
        numbers = {k: int(v) for k, v in kv.items() if k in ("bits", "group")}
        if name == "weight_quant":
            cfg = weight_quant.Config(**numbers)
            found.append(["quant", cfg.bits, cfg.group])
        elif name == "sparse24" and kv.get("method", "magnitude") == "magnitude":
            found.append(["sparse24", sparse24.Config(**numbers).bits])
    return found


# Models whose every intermediate value is compared with the IR interpreter on the GPU, so a
# wrong kernel is found by name (the first value that disagrees).
PROBES: list[tuple[str, dict[str, int]]] = [("bert_minilm", {"batch": 1}),
                                            ("gpt2_6l", {})]
SAMPLES = 64  # values per intermediate compared (evenly spaced), plus sum and abs-sum


def value_stats(a: np.ndarray) -> dict[str, Any]:
    flat = np.asarray(a, dtype=np.float64).ravel()
    picks = flat[np.linspace(0, flat.size - 1, min(SAMPLES, flat.size)).astype(np.int64)] \
        if flat.size else flat
    finite = np.isfinite(flat)
    return {"sum": float(flat[finite].sum()), "abs_sum": float(np.abs(flat[finite]).sum()),
            "nonfinite": int((~finite).sum()), "samples": picks.tolist()}


def build_probe(out: Path, name: str, kwargs: dict[str, int]) -> dict[str, Any]:
    import honer
    from honer import frontend
    from honer.ir import interpret

    model, inputs = make_model(name, kwargs)
    graph = frontend.capture(model, inputs)
    probed = [n.output for n in graph.nodes if len(n.outputs) == 1]
    graph.set_outputs(probed)
    compiled = honer.compile(graph, inputs, target="cuda")
    pid = "probe_" + Case(name, kwargs).id
    recipe = save_case(out / pid, compiled, model, inputs)
    want = interpret(graph, [x.numpy() for x in inputs])
    nodes = {id(n.output): n for n in graph.nodes if len(n.outputs) == 1}
    return {"id": pid, "model": name, "kwargs": kwargs, "recipe": recipe,
            "values": [{"node": nodes[id(v)].name, "op": nodes[id(v)].op,
                        "scope": nodes[id(v)].scope, **value_stats(w)}
                       for v, w in zip(probed, want)]}


def save_case(case_dir: Path, compiled: Any, model: Any, inputs: tuple,
              derived: list[list] = ()) -> list[dict]:
    """The artifact without its weight file (replaced by the recipe it returns), and the
    example inputs."""
    if case_dir.exists():
        shutil.rmtree(case_dir)
    compiled.save(case_dir)
    recipe = weight_recipe(case_dir, model, derived)
    (case_dir / "weights.bin").unlink()
    saved_inputs(case_dir, inputs)
    return recipe


def weight_recipe(artifact: Path, model: Any, derived: list[list] = ()
                  ) -> list[dict[str, Any]]:
    """For each stored weight: the torch parameter or buffer (and layout, dtype) whose bytes
    it is, or a part of what one of the `derived` rewrites makes of it (see `derivations`),
    or else the file holding the weight itself."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    blob = np.memmap(artifact / "weights.bin", dtype=np.uint8, mode="r")
    by_size: dict[int, list[tuple[dict[str, Any], np.ndarray]]] = {}
    for key, t in model.state_dict().items():
        a = t.detach().numpy()
        by_size.setdefault(a.size, []).append(({"key": key}, a))
        for how in derived if a.ndim == 2 else ():
            for part, q in derived_parts(a, how).items():
                by_size.setdefault(q.size, []).append(
                    ({"key": key, "derive": how, "part": part}, q))
    recipe = []
    for i, w in enumerate(manifest["weights"]):
        want = bytes(blob[w["offset"]:w["offset"] + w["nbytes"]])
        layout = w.get("layout", "as-is")
        found = next(({**source, "layout": layout, "dtype": w["dtype"]}
                      for source, a in sorted(by_size.get(int(np.prod(w["shape"])), []),
                                              key=lambda c: str(c[1].dtype) != w["dtype"])
                      if _stored(a, layout, w["dtype"], w["shape"]) == want), None)
        if found is None:
            np.save(artifact / f"weight_{i}.npy",
                    np.frombuffer(want, dtype=w["dtype"]).reshape(w["shape"]))
            found = {"file": f"weight_{i}.npy"}
        recipe.append(found)
    return recipe


def derived_parts(a: np.ndarray, how: list) -> dict[str, np.ndarray]:
    from honer.ir.ops import compress_24
    from honer.passes import sparse24
    from honer.passes.weight_quant import quantize_weight

    if how[0] == "quant":
        bits, group = how[1:]
        if bits == 4 and a.shape[1] % group:
            return {}
        qw = quantize_weight(a, bits, group)
        return {"q": qw.q, "scale": qw.scale, "zero": qw.zero}
    if a.shape[1] % 8:
        return {}
    pruned = sparse24.prune_24(a)
    values, index = compress_24(pruned)
    parts = {"dense": pruned, "values": values, "index": index}
    if how[1]:
        parts["values"], parts["scale"] = sparse24.int8_rows(values)
    return parts


def _stored(a: np.ndarray, layout: str, dtype: str, shape: list[int]) -> bytes | None:
    try:
        data = LAYOUTS[layout](a).astype(dtype)
    except (ValueError, TypeError):  # that layout does not apply to this array
        return None
    return np.ascontiguousarray(data).reshape(shape).tobytes() if data.size else None


def pack_runtime(dest: Path, python_version: str) -> None:
    """TVM's runtime for the GPU machine: the Python package without the compiler library
    (260 MB, not needed to run an artifact), and the tvm-ffi wheel for its Python."""
    import importlib.metadata

    import tvm

    dest.mkdir(parents=True, exist_ok=True)
    package = Path(tvm.__file__).parent

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        skip = ("libtvm_compiler", "3rdparty", "__pycache__", "/src/")
        return None if any(s in info.name for s in skip) else info

    with tarfile.open(dest / "tvm-runtime.tar.gz", "w:gz") as tar:
        tar.add(package, arcname="tvm", filter=keep)
    ffi = importlib.metadata.version("apache-tvm-ffi")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", python_version,
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "-d", str(dest), f"apache-tvm-ffi=={ffi}"], check=True)


# ---------------------------------------------------------------- step 2: run (GPU)

def run(bundle: Path, out: Path, time_limit_s: float) -> None:
    import torch

    from . import harness

    started = time.perf_counter()
    results: dict[str, Any] = {"environment": harness.environment(),
                               "gpu": torch.cuda.get_device_name(0), "cases": [], "probes": []}
    for case in json.loads((bundle / "cases.json").read_text()):
        with_compile = time.perf_counter() - started < time_limit_s
        row = {"id": case["id"], "precision": case["precision"],
               **_in_child(bundle, "case", case["id"], with_compile)}
        results["cases"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(results, indent=1))  # partial results survive a timeout
    probes = bundle / "probes.json"
    for probe in json.loads(probes.read_text()) if probes.exists() else []:
        row = {"id": probe["id"], **_in_child(bundle, "probe", probe["id"], False)}
        results["probes"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(results, indent=1))
    print(summary(results["cases"]))


def _in_child(bundle: Path, kind: str, cid: str, with_compile: bool) -> dict[str, Any]:
    """One case per process: a kernel that faults takes down its process (CUDA errors are
    sticky), and must not take the remaining cases with it."""
    cmd = [sys.executable, "-m", "honer.benchmarks.gpu_check", kind, "--bundle", str(bundle),
           "--id", cid] + (["--with-compile"] if with_compile else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 300 s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"error": f"exit {proc.returncode}: " + " | ".join(proc.stderr.strip()
                                                              .splitlines()[-4:])}


def run_one(bundle: Path, kind: str, cid: str, with_compile: bool) -> None:
    listing = "probes.json" if kind == "probe" else "cases.json"
    case = next(c for c in json.loads((bundle / listing).read_text()) if c["id"] == cid)
    if kind == "once":  # one run, no timing: for compute-sanitizer
        model, made = make_model(case["model"], case["kwargs"])
        rebuild_weights(bundle / cid, case, model)
        import honer

        honer.load(bundle / cid).run(*load_inputs(bundle / cid, made))
        row = {"ran": cid}
    elif kind == "case":
        row = check_case(bundle / cid, case, with_compile)
    else:
        row = check_probe(bundle / cid, case)
    print(json.dumps(row))


def check_probe(artifact: Path, probe: dict[str, Any]) -> dict[str, Any]:
    """The first intermediate values whose stats disagree with the interpreter's."""
    import honer

    model, made = make_model(probe["model"], probe["kwargs"])
    rebuild_weights(artifact, probe, model)
    got = honer.load(artifact).run(*load_inputs(artifact, made))
    bad = []
    for want, g in zip(probe["values"], got):
        have = value_stats(g)
        samples = np.abs(np.array(have["samples"]) - np.array(want["samples"]))
        err = float(samples.max(initial=0.0)) / max(np.abs(want["samples"]).max(initial=0.0),
                                                    1e-30)
        if err > 1e-3 or have["nonfinite"] != want["nonfinite"]:
            bad.append({"node": want["node"], "op": want["op"], "scope": want["scope"],
                        "sample_error": err, "nonfinite": [have["nonfinite"],
                                                           want["nonfinite"]]})
    return {"values": len(got), "disagree": len(bad), "first": bad[:8]}


def rebuild_weights(artifact: Path, case: dict[str, Any], model: Any) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    weights = manifest["weights"]
    blob = bytearray(max((w["offset"] + w["nbytes"] for w in weights), default=0))
    derived: dict[str, dict[str, np.ndarray]] = {}  # the parts of one rewrite come together
    for w, r in zip(weights, case["recipe"]):
        if "file" in r:
            data = np.load(artifact / r["file"])
        else:
            source = state[r["key"]]
            if "derive" in r:
                how = json.dumps([r["key"], r["derive"]])
                if how not in derived:
                    derived[how] = derived_parts(source, r["derive"])
                source = derived[how][r["part"]]
            data = LAYOUTS[r["layout"]](source).astype(r["dtype"])
        raw = np.ascontiguousarray(data).tobytes()
        blob[w["offset"]:w["offset"] + len(raw)] = raw
    (artifact / "weights.bin").write_bytes(bytes(blob))


def check_case(artifact: Path, case: dict[str, Any], with_compile: bool) -> dict[str, Any]:
    import torch

    import honer

    from . import harness

    model, made = make_model(case["model"], case["kwargs"])
    rebuild_weights(artifact, case, model)
    loaded = honer.load(artifact)  # checks the rebuilt weights against the manifest hashes
    arrays = load_inputs(artifact, made)
    model = model.cuda()
    inputs = [torch.from_numpy(a).cuda() for a in arrays]
    with torch.no_grad():
        want = model(*inputs).float().cpu().numpy()
    got = loaded(*arrays)
    scale = float(np.abs(want).max()) or 1.0
    row: dict[str, Any] = {"max_scaled_error_vs_eager_fp32": float(np.abs(got - want).max())
                           / scale}
    # other inputs through the same loaded model: no state (a captured CUDA graph, a cached
    # buffer) may carry the first call's data over
    others = [np.roll(a, 1, axis=-1) if a.dtype.kind in "iu" else a[::-1].copy() * 0.5
              for a in arrays]
    with torch.no_grad():
        want2 = model(*[torch.from_numpy(a).cuda() for a in others]).float().cpu().numpy()
    row["second_inputs_error_vs_eager_fp32"] = float(np.abs(loaded(*others) - want2).max()) / (
        float(np.abs(want2).max()) or 1.0)
    # approximate passes: checked against their own graph, the cost reported apart (a case
    # kept from an older bundle has its reference in its own directory)
    reference = artifact.parent / case["expected"] if case.get("expected") else \
        artifact / "expected.npy"
    if reference.exists():
        expected = np.load(reference)
        row["max_scaled_error_vs_pass_reference"] = float(np.abs(got - expected).max()) / (
            float(np.abs(expected).max()) or 1.0)
        row["pass_error_vs_eager_fp32"] = row.pop("max_scaled_error_vs_eager_fp32")
    runner = loaded.compiled
    device_inputs = runner.to_device(arrays)
    timings = {"honer": harness.measure("honer", lambda: (runner.on_device(device_inputs),
                                                          runner.device.sync()), runs=50,
                                        warmup=10)}
    peer, peer_inputs = model, inputs
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(case["precision"])
    if half is not None:  # the peers compute in the same precision
        peer = model.to(half)
        peer_inputs = [x.to(half) if x.is_floating_point() else x for x in inputs]
        with torch.no_grad():
            half_out = peer(*peer_inputs).float().cpu().numpy()
        row[f"torch_{case['precision']}_eager_scaled_error"] = \
            float(np.abs(half_out - want).max()) / scale
    timings["eager"] = _time_torch("eager", peer, peer_inputs)
    if case["compare_compile"] and with_compile:
        t0 = time.perf_counter()
        compiled_peer = torch.compile(peer)
        timings["torch.compile"] = _time_torch("torch.compile", compiled_peer, peer_inputs)
        row["torch_compile_s"] = round(time.perf_counter() - t0, 1)
    row["median_ms"] = {k: round(t.median_ms, 4) for k, t in timings.items()}
    row["honer_speedup"] = {k: round(t.median_ms / timings["honer"].median_ms, 3)
                            for k, t in timings.items() if k != "honer"}
    if case.get("profile"):
        row["kernels_us"] = {"honer": kernel_profile(lambda: runner.on_device(device_inputs))}
        if "torch.compile" in timings:  # the same compiled module, not a second compile
            with torch.no_grad():
                row["kernels_us"]["torch.compile"] = kernel_profile(
                    lambda: compiled_peer(*peer_inputs))
    return row


def kernel_profile(step: Any, runs: int = 20, top: int = 24) -> list[list]:
    """[kernel, launches per run, microseconds per run] of the `top` kernels by GPU time,
    from CUPTI's activity trace (torch.profiler), which sees every kernel the process
    launches, TVM's included."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            step()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total:
            rows.append([event.key[:120], round(event.count / runs, 2), round(total / runs, 2)])
    rows.sort(key=lambda r: -r[2])
    return [["(all kernels)", sum(r[1] for r in rows), round(sum(r[2] for r in rows), 2)],
            *rows[:top]]


def _time_torch(name: str, model: Any, inputs: list[Any]) -> Any:
    import torch

    from . import harness

    def step() -> None:
        model(*inputs)
        torch.cuda.synchronize()

    with torch.no_grad():
        return harness.measure(name, step, runs=50, warmup=10)


def summary(rows: list[dict[str, Any]]) -> str:
    from . import harness

    def error(r: dict[str, Any]) -> float:  # against eager, or a pass's own reference
        return r.get("max_scaled_error_vs_eager_fp32",
                     r.get("max_scaled_error_vs_pass_reference", float("nan")))

    table = [[r["id"], f"{error(r):.2e}",
              *(r.get("median_ms", {}).get(k, "-") for k in ("honer", "eager", "torch.compile")),
              r.get("error", "")[:60]] for r in rows]
    return harness.table(table, ["case", "err/scale", "honer ms", "eager ms", "compile ms",
                                 "error"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build", help="compile the bundle here (no GPU needed)")
    b.add_argument("--out", type=Path, default=Path(".gpu_bundle"))
    b.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    b.add_argument("--only", help="comma-separated case ids to rebuild (others are kept)")
    b.add_argument("--select", help="comma-separated regular expressions: bundle only the "
                   "cases whose id one matches (a plain string: contains it)")
    r = sub.add_parser("run", help="run the bundle on a GPU machine")
    r.add_argument("--bundle", type=Path, default=Path(".gpu_bundle"))
    r.add_argument("--out", type=Path,
                   default=Path(__file__).parent / "results" / "gpu_check.json")
    r.add_argument("--compile-until-s", type=float, default=300.0,
                   help="stop timing torch.compile (slow to compile) after this many seconds")
    for kind in ("case", "probe", "once"):  # internal: one case in a child process
        c = sub.add_parser(kind)
        c.add_argument("--bundle", type=Path, required=True)
        c.add_argument("--id", required=True)
        c.add_argument("--with-compile", action="store_true")
    args = parser.parse_args(argv)
    if args.step == "build":
        build(args.out, args.python_version,
              set(args.only.split(",")) if args.only else None,
              args.select.split(",") if args.select else None)
    elif args.step == "run":
        run(args.bundle, args.out, args.compile_until_s)
    else:
        run_one(args.bundle, args.step, args.id, args.with_compile)


if __name__ == "__main__":
    main()
