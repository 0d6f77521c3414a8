"""Structural reparameterization of parallel conv branches (RepVGG, ACNet).

Matches a sum (a tree of `add`s) whose terms are branches over one input x: convs of x (any
kernel sizes that pad to one shape, e.g. 3x3 + 1x1, or 3x3 + 1x3 + 3x1), per-channel affine
maps of x (an identity branch with its BatchNorm), or x itself. All convs must share stride,
groups and dilation 1, and their padding must centre each kernel on the same output pixel.
The branches become one conv: kernels zero-padded to the largest size and summed, biases summed,
identity branches as centred one-hot kernels. Exact to float rounding. Runs after `bn_fold`
(so each branch's BatchNorm is already in its conv) and before `act_fuse`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..ir import Graph, Node, Value
from .base import Calibration, PassReport, PassResult
from .bn_fold import bn_affine
from .rewrite import new_weight, sole_user, where


@dataclass(frozen=True)
class Config:
    pass


@dataclass
class Branch:
    source: Value
    node: Node | None  # the conv, or None for an identity branch
    scale: np.ndarray | None = None  # identity branches: per-channel scale and shift
    shift: np.ndarray | None = None
    kernel: np.ndarray = field(default=None)  # conv branches, float64
    bias: np.ndarray = field(default=None)


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    g = graph.copy()
    report = PassReport("repvgg", asdict(cfg))
    merged_branches = 0
    for root in [n for n in g.nodes if n.op == "add" and _is_tree_root(g, n)]:
        terms = _sum_terms(g, root)
        branches = [_branch(g, t) for t in terms]
        if not any(b is not None and b.node is not None for b in branches):
            continue  # not a sum of conv branches at all: nothing to say
        reason = _merge(g, root, branches)
        if reason:
            report.reject(where(root), reason)
        else:
            report.matches += 1
            merged_branches += len(branches)
    g.remove_dead()
    report.effect = {"blocks_merged": report.matches, "branches_merged": merged_branches,
                     "convs_before": sum(n.op == "conv" for n in graph.nodes),
                     "convs_after": sum(n.op == "conv" for n in g.nodes),
                     "weight_bytes_before": graph.weight_bytes(),
                     "weight_bytes_after": g.weight_bytes()}
    return PassResult(g, report.matches > 0, report)


def _is_tree_root(g: Graph, node: Node) -> bool:
    user = sole_user(g, node.output)
    return user is None or user.op != "add"


def _sum_terms(g: Graph, node: Node) -> list[Value]:
    terms = []
    for v in node.inputs:
        p = v.producer
        if p is not None and p.op == "add" and sole_user(g, v) is node:
            terms += _sum_terms(g, p)
        else:
            terms.append(v)
    return terms


def _branch(g: Graph, term: Value) -> Branch | None:
    p = term.producer
    if p is not None and p.op == "conv" and sole_user(g, term) is not None \
            and p.inputs[1].is_const and all(v.is_const for v in p.inputs[2:]) \
            and p.attrs["activation"] == "none":
        w = p.inputs[1].data.astype(np.float64)
        b = p.inputs[2].data.astype(np.float64) if len(p.inputs) > 2 else np.zeros(w.shape[0])
        return Branch(p.inputs[0], p, kernel=w, bias=b)
    if p is not None and p.op == "batch_norm" and all(v.is_const for v in p.inputs[1:]):
        scale, shift = bn_affine(p)
        return Branch(p.inputs[0], None, scale, shift)
    if len(term.shape) >= 3:  # the bare input: an identity branch
        return Branch(term, None, np.ones(term.shape[1]), np.zeros(term.shape[1]))
    return None


def _merge(g: Graph, root: Node, branches: list[Branch | None]) -> str | None:
    if any(b is None for b in branches):
        return "a term of the sum is neither a conv, a BatchNorm nor the shared input"
    sources = {id(b.source) for b in branches}
    if len(sources) != 1:
        return "branches read different inputs (a residual connection, not parallel branches)"
    convs = [b for b in branches if b.node is not None]
    first = convs[0].node.attrs
    nsp = len(first["strides"])
    for b in convs[1:]:
        a = b.node.attrs
        if a["strides"] != first["strides"]:
            return f"branches have mismatched strides {first['strides']} and {a['strides']}"
        if a["groups"] != first["groups"]:
            return f"branches have mismatched groups {first['groups']} and {a['groups']}"
    if any(d != 1 for b in convs for d in b.node.attrs["dilation"]):
        return "dilated branches are not merged"
    offsets = {_centre_offsets(b) for b in convs}
    if len(offsets) != 1 or None in offsets:
        return "branches have mismatched padding: their kernels are not centred on the same " \
               "output pixel"
    identities = [b for b in branches if b.node is None]
    if identities and (any(s != 1 for s in first["strides"]) or
                       convs[0].kernel.shape[0] != convs[0].source.shape[1]):
        return "an identity branch needs stride 1 and as many output as input channels"
    size = tuple(max(b.kernel.shape[2 + i] for b in convs) for i in range(nsp))
    if any((size[i] - b.kernel.shape[2 + i]) % 2 for b in convs for i in range(nsp)):
        return "kernel sizes differ by an odd amount and cannot be centred"
    kernel = np.zeros(convs[0].kernel.shape[:2] + size)
    bias = np.zeros(kernel.shape[0])
    for b in convs:
        kernel[_centre(b.kernel.shape[2:], size)] += b.kernel
        bias += b.bias
    for b in identities:
        kernel += _identity_kernel(b.scale, kernel.shape, first["groups"])
        bias += b.shift
    biggest = max(convs, key=lambda b: b.kernel.size).node
    conv = g.add_node("conv", [convs[0].source, new_weight(g, kernel, biggest.inputs[1], "_rep"),
                               new_weight(g, bias, biggest.inputs[1], "_rep_bias")],
                      {**biggest.attrs}, root.scope or biggest.scope, before=root)
    g.replace_all_uses(root.output, conv.output)
    return None


def _centre_offsets(b: Branch) -> tuple | None:
    """Per spatial axis: how far the kernel centre sits from the padded input's start, and the
    same from its end; equal tuples mean the branches see the same window centres."""
    pad, k = b.node.attrs["padding"], b.kernel.shape[2:]
    nsp = len(k)
    return tuple((pad[i] - k[i] // 2, pad[nsp + i] - (k[i] - 1 - k[i] // 2)) for i in range(nsp))


def _centre(small: tuple, big: tuple) -> tuple:
    return (slice(None), slice(None)) + tuple(
        slice((b - s) // 2, (b - s) // 2 + s) for s, b in zip(small, big))


def _identity_kernel(scale: np.ndarray, shape: tuple, groups: int) -> np.ndarray:
    out = np.zeros(shape)
    per_group = shape[1]
    centre = tuple(k // 2 for k in shape[2:])
    for o in range(shape[0]):
        out[(o, o % per_group) + centre] = scale[o]
    return out
