"""2:4 structured sparsity of linear layers: in every group of 4 consecutive input channels of a
weight row, the 2 least important weights become zero (the pattern of NVIDIA's sparse tensor
cores; half the weights, and with compressed storage about half the bytes).

Matches: `linear` nodes with a constant float weight whose input size is a multiple of 8,
except those whose scope matches a `keep_dense` pattern. Importance:
- `method=magnitude`: |w|;
- `method=wanda` (Sun et al., ICLR 2024): |w| * ||x_j||_2, the weight times the norm of its
  input channel over the calibration tokens, so a small weight on a loud channel survives.
Composable with int8: `bits=8` stores the kept values as int8 with one scale per output row.

Each pruned layer takes one of two forms:
- compressed: `sparse_linear`, values [out, in/2] plus a nibble of two 2-bit positions per
  group, decompressed in the kernel's inner loop (fewer bytes read, the same FLOPs);
- dense: a plain `linear` with the pruned weight (or with `bits=8` a per-channel int8
  `quant_linear` of it: the same numbers as the compressed int8 form).
`form=auto` (default) times both kernels for each layer's shape on this machine's CPU and keeps
the faster: compressed wins where the layer is memory-bound (few rows: decoding, small batches),
dense where it computes (many rows). `form=compressed|dense` forces one.

Approximate. The report gives, per layer, the kept weight fraction, the output SQNR on the
calibration data, both kernel timings and the form chosen, and the weight bytes before and after.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import PassError
from ..ir import Graph, Node
from ..ir.ops import compress_24
from .base import Calibration, PassReport, PassResult
from .linears import calibration_inputs, const_linears, replace_linear, scope_patterns, sqnr_db
from .weight_quant import quantize_weight

NAME = "sparse24"
METHODS = ("magnitude", "wanda")
FORMS = ("auto", "compressed", "dense")


@dataclass(frozen=True)
class Config:
    method: str = "magnitude"  # magnitude | wanda (needs calibration data)
    bits: int = 0  # 0: float values; 8: int8 values, one scale per output row
    form: str = "auto"  # auto (timed per shape) | compressed | dense
    keep_dense: str = ""  # scope patterns left unpruned, "+"-separated: "*classifier*"
    max_tokens: int = 4096  # calibration rows used per layer


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    report = PassReport(NAME, asdict(cfg), exact=False)
    _check(cfg, calib)
    out = graph.copy()
    groups = const_linears(out, scope_patterns(cfg.keep_dense), "kept dense (keep_dense)",
                           report, _unsuitable)
    inputs = calibration_inputs(out, groups, calib, cfg.max_tokens) if calib else {}
    layers, bytes_before, bytes_after = {}, 0, 0
    for key, nodes in groups.items():
        x = inputs.get(key)
        for node in nodes:
            w = node.inputs[1].data.astype(np.float32)
            pruned = prune_24(w, None if cfg.method == "magnitude" else x)
            info = {"kept": round(float((pruned != 0).mean()), 4)}
            if x is not None:
                info["sqnr_db"] = round(sqnr_db(x @ w.T, x @ _effective(pruned, cfg.bits).T), 2)
            rows = int(np.prod(node.inputs[0].shape[:-1], dtype=np.int64))
            form, timings = _choose_form(cfg, rows, w.shape, node.inputs[0].dtype)
            new = _rewrite(out, node, pruned, cfg.bits, form)
            bytes_before += w.nbytes
            weights = new.inputs[1:2] if new.op == "linear" else new.inputs[1:4]  # no bias
            bytes_after += sum(v.data.nbytes for v in weights)
            layers[node.scope or node.name] = {**info, "rows": rows, **timings, "form": form}
    out.remove_dead()
    report.matches = len(layers)
    report.effect = {"layers": layers, "weight_bytes_before": bytes_before,
                     "weight_bytes_after": bytes_after,
                     "compressed_layers": sum(v["form"] == "compressed" for v in layers.values())}
    return PassResult(out, bool(layers), report)


def _check(cfg: Config, calib: Calibration | None) -> None:
    if cfg.method not in METHODS:
        raise PassError(NAME, f"method={cfg.method!r}: use one of {', '.join(METHODS)}")
    if cfg.method == "wanda" and not calib:
        raise PassError(NAME, "method=wanda weighs each weight by its input's norm on "
                              "calibration data: pass calibration= (CLI: --calibration)")
    if cfg.bits not in (0, 8):
        raise PassError(NAME, f"bits={cfg.bits}: use 0 (float values) or 8 (int8 values)")
    if cfg.form not in FORMS:
        raise PassError(NAME, f"form={cfg.form!r}: use one of {', '.join(FORMS)}")


def _unsuitable(w: np.ndarray) -> str | None:
    return None if w.shape[1] % 8 == 0 else \
        f"{w.shape[1]} input channels are not a multiple of 8; kept dense"


def prune_24(w: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """w with the 2 least important of every 4 consecutive input weights zeroed; importance
    |w|, or with activations x ([tokens, in]) Wanda's |w| * ||x_j||."""
    score = np.abs(w) if x is None else np.abs(w) * np.linalg.norm(x, axis=0)[None, :]
    out, k = w.shape
    order = np.argsort(score.reshape(out, k // 4, 4), axis=-1, kind="stable")
    mask = np.ones((out, k // 4, 4), bool)
    np.put_along_axis(mask, order[..., :2], False, axis=-1)
    return np.where(mask.reshape(out, k), w, 0.0).astype(np.float32)


def int8_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row, as weight_quant's bits=8 (so both forms give the same numbers)."""
    qw = quantize_weight(values, 8, 0)
    return qw.q, qw.scale


def _effective(pruned: np.ndarray, bits: int) -> np.ndarray:
    """The weight the compiled layer computes with."""
    if not bits:
        return pruned
    q, scale = int8_rows(pruned)
    return q.astype(np.float32) * scale


def _rewrite(graph: Graph, node: Node, pruned: np.ndarray, bits: int, form: str) -> Node:
    if form == "dense" and not bits:
        return replace_linear(graph, node, "linear", [(pruned, "24")], {})
    if form == "dense":
        q, scale = int8_rows(pruned)
        return replace_linear(graph, node, "quant_linear",
                              [(q, "q"), (scale, "scale"), (np.zeros_like(q[:, :1]), "zero")],
                              {"bits": 8})
    values, index = compress_24(pruned)
    scale = np.ones((values.shape[0], 1), np.float32)
    if bits:
        values, scale = int8_rows(values)  # the rows' max is the same as the pruned rows'
    return replace_linear(graph, node, "sparse_linear",
                          [(values, "values"), (index, "index"), (scale, "scale")], {})


# ---- which form is faster for a shape, on this machine ----------------------------------------

_TIMINGS: dict[tuple, dict[str, float]] = {}  # (rows, out, in, dtype, bits) -> form -> us


def _choose_form(cfg: Config, rows: int, shape: tuple[int, int], dtype: str
                 ) -> tuple[str, dict[str, float]]:
    if cfg.form != "auto":
        return cfg.form, {}
    key = (rows, *shape, dtype, cfg.bits)
    if key not in _TIMINGS:
        _TIMINGS[key] = {form: _time_layer(rows, shape, dtype, cfg.bits, form)
                         for form in ("dense", "compressed")}
    # chosen on the figures the report shows, so that they explain the choice (chosen on
    # unrounded ones, a layer could report a tie beside the compressed form); dense on a tie
    dense, compressed = (round(_TIMINGS[key][form], 1) for form in ("dense", "compressed"))
    best = "dense" if dense <= compressed else "compressed"
    return best, {"dense_us": dense, "compressed_us": compressed}


def _time_layer(rows: int, shape: tuple[int, int], dtype: str, bits: int, form: str) -> float:
    """Median microseconds of one such layer, compiled for the host, on random data."""
    from .. import api

    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", (rows, shape[1]), dtype)
    dense = g.add_node("linear", [x, g.add_const(rng.standard_normal(shape).astype(np.float32),
                                                 "w")], {"activation": "none"}, "layer")
    g.set_outputs([dense.output])
    _rewrite(g, dense, prune_24(dense.inputs[1].data), bits, form)
    data = rng.standard_normal((rows, shape[1])).astype(dtype)
    run = api.compile(g, (data,), target="host", check=False).loaded.compiled
    args = run.to_device([data])
    samples = []
    for i in range(30):
        start = time.perf_counter()
        run.on_device(args)
        if i >= 5:  # warm-up
            samples.append(time.perf_counter() - start)
    return float(np.median(samples)) * 1e6
