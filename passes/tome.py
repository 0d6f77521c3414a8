"""Token reduction per block: ToMe token merging (Bolya et al., ICLR 2023) or token pruning.

Matches: the residual blocks (`blocks.find_blocks`) whose stream is [batch, tokens, width] and
that hold one non-causal `attention` over their own tokens. In each selected block, between
attention and MLP (at the residual add after attention), r tokens go:
- `mode=merge` (ToMe): tokens split alternately into sets A and B; each A token picks the B
  token whose key (averaged over heads) has the highest cosine; the r best pairs are merged by
  a size-weighted average. `tome_plan` gives the [N-r, N] merge matrix W; x' = W(x*s) / Ws and
  the sizes s' = Ws;
- `mode=prune`: the r tokens the class token attends to least are dropped (`prune_plan`).
Every block after the first reduction sees fewer tokens: shapes downstream follow (reshape and
broadcast shapes are rewritten) and attention takes log(size) as a bias (proportional
attention). Protected tokens are never merged: the first `protect` (the class token, found
from the head reading token 0). Padding (from a key-padding attention mask) has size 0, so
log(size) keeps it masked and merging it is lossless: padding merges first, and a real token
only ever moves into a padding slot when no real partner is left. After the last block the
tokens are spread back to their positions (x = W^T x': a mean pooling becomes the
size-weighted mean, per-token outputs keep their shape), unless the head only reads the class
token.

r per block: `schedule=constant` (r everywhere), `decreasing` (ToMe's: 1.5r falling to 0.5r
over the selected blocks) or an explicit list `16+8+4` (one per selected block). An r above
what a block can remove is clamped and the report says so.

Approximate. The report gives tokens entering and leaving every block, FLOPs before and after,
and the output error on the first calibration sample. Belongs after the exact passes; composes
with layer_skip.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import IRError, PassError
from ..ir import Graph, Node, Value
from ..ir.analysis import flops
from ..ir.ops import UNARY, get_schema, merge_limit
from .base import Calibration, PassReport, PassResult
from .blocks import Block, find_blocks, parse_block_list
from .rewrite import where

NAME = "tome"
MODES = ("merge", "prune")
REDUCTIONS = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod")


@dataclass(frozen=True)
class Config:
    r: int = 0  # tokens removed in each selected block
    schedule: str = "constant"  # "constant", "decreasing", or one r per block: "16+8+4"
    blocks: str = ""  # which blocks, e.g. "0-5" or "2+3"; every block by default
    mode: str = "merge"  # "merge" (ToMe) or "prune" (drop the least attended tokens)
    protect: int = -1  # leading tokens never merged; -1: 1 if the head reads token 0, else 0
    proportional: bool = True  # log(size) attention bias (False: only padding stays masked)


@dataclass
class Site:
    """Where a block's tokens are reduced: after its attention's residual add."""

    block: Block
    attention: Node
    after_attention: Value


def run(graph: Graph, cfg: Config, calib: Calibration | None = None) -> PassResult:
    report = PassReport(NAME, asdict(cfg), exact=False)
    if cfg.mode not in MODES:
        raise PassError(NAME, f"mode={cfg.mode!r}: use one of {', '.join(MODES)}")
    blocks = find_blocks(graph, report)
    if not blocks:
        report.reject("graph", "no repeated residual blocks found")
        return PassResult(graph.copy(), False, report)
    sites = [_site(b, report) for b in blocks]
    class_head = _reads_only_token0(graph, blocks[-1].exit)
    protect = cfg.protect if cfg.protect >= 0 else int(class_head)
    if cfg.mode == "prune" and protect == 0:
        raise PassError(NAME, "mode=prune keeps the tokens the class token attends to most, but "
                              "the head does not read a class token (token 0); give protect=1 "
                              "if token 0 is one")
    plan = _plan(cfg, blocks, sites, protect, report)
    if not plan:
        return PassResult(graph.copy(), False, report)
    first = min(blocks.index(site.block) for site, _ in plan.values())
    mask_kind = _check_masks([s for s in sites[first:] if s is not None], report)
    out = _Rebuild(graph, cfg, plan, protect, mask_kind,
                   None if class_head else blocks[-1].exit).run()
    out.remove_dead()
    report.matches = len(plan)
    report.effect = {"tokens": _token_counts(blocks, plan), "protect": protect,
                     "class_token_head": class_head, "flops_before": flops(graph),
                     "flops_after": flops(out)}
    return PassResult(out, True, report)


# ---- matching ----------------------------------------------------------------------------------


def _site(block: Block, report: PassReport) -> Site | None:
    stream = block.entry
    if len(stream.shape) != 3:
        report.reject(block.scope, f"stream is {stream.type}, not [batch, tokens, width]")
        return None
    attentions = [n for n in block.nodes if n.op == "attention"]
    if len(attentions) != 1:
        report.reject(block.scope, f"{len(attentions)} attention ops (need one)")
        return None
    att = attentions[0]
    if att.attrs["causal"]:
        report.reject(block.scope, "causal attention: a merged token would mix a token with "
                                   "later ones that it must not see")
        return None
    if att.inputs[1].shape[2] != stream.shape[1]:
        report.reject(block.scope, "attention keys are not the block's own tokens")
        return None
    after = block.nodes[block.nodes.index(att) + 1:]
    residual = next((n for n in after if n.op == "add" and stream in n.inputs
                     and n.output.shape == stream.shape), None)
    if residual is None:
        report.reject(block.scope, "no residual add after the attention")
        return None
    return Site(block, att, residual.output)


def _schedule(cfg: Config, count: int) -> list[int]:
    if cfg.schedule == "constant":
        return [cfg.r] * count
    if cfg.schedule == "decreasing":  # ToMe's: linear from 1.5 r down to 0.5 r
        if count == 1:
            return [cfg.r]
        return [int(round(cfg.r * (1.5 - i / (count - 1)))) for i in range(count)]
    try:
        rs = [int(p) for p in cfg.schedule.replace(",", "+").split("+")]
    except ValueError:
        raise PassError(NAME, f"schedule={cfg.schedule!r}: use constant, decreasing or one r "
                              "per block like '16+8+4'") from None
    if len(rs) != count or min(rs) < 0:
        raise PassError(NAME, f"schedule={cfg.schedule!r} gives {len(rs)} values for {count} "
                              "selected blocks (need one r >= 0 per block)")
    return rs


def _plan(cfg: Config, blocks: list[Block], sites: list[Site | None], protect: int,
          report: PassReport) -> dict[int, tuple[Site, int]]:
    """{id(value after attention): (site, r)}, with r clamped to what each block can remove."""
    chosen = (parse_block_list(NAME, cfg.blocks, len(blocks)) if cfg.blocks
              else list(range(len(blocks))))
    rs = _schedule(cfg, len(chosen))
    if cfg.schedule in ("constant", "decreasing") and cfg.r <= 0:
        raise PassError(NAME, "give r=N (tokens removed per block), N >= 1")
    tokens = blocks[0].entry.shape[1]
    plan = {}
    for i, r in zip(chosen, rs):
        site = sites[i]
        if site is None or r == 0:
            continue
        limit = tokens - protect if cfg.mode == "prune" else merge_limit(tokens, protect)
        if r > limit:
            report.reject(site.block.scope, f"r={r} clamped to {max(limit, 0)}: {tokens} tokens, "
                                            f"{protect} protected")
            r = limit
        if r > 0:
            plan[id(site.after_attention)] = (site, r)
            tokens -= r
    return plan


def _token_counts(blocks: list[Block], plan: dict[int, tuple[Site, int]]) -> dict[str, list]:
    removed = {id(site.block): r for site, r in plan.values()}
    tokens, counts = blocks[0].entry.shape[1], {}
    for b in blocks:
        counts[b.scope] = [tokens, tokens - removed.get(id(b), 0)]
        tokens = counts[b.scope][1]
    return counts


def _reads_only_token0(graph: Graph, v: Value) -> bool:
    """Whether every use of `v` (through per-token ops) selects token 0 only: then the head
    reads the class token and nothing needs the other tokens back."""
    if any(o is v for o in graph.outputs) or not v.users:
        return False
    for user in v.users:
        if user.op in ("layer_norm", "rms_norm", "cast") or user.op in UNARY:
            if user.inputs[0] is not v or not _reads_only_token0(graph, user.output):
                return False
        elif not _selects_token0(user, v):
            return False
    return True


def _selects_token0(node: Node, v: Value) -> bool:
    rank = len(v.shape)
    if node.op == "slice":
        a = node.attrs
        return ([x % rank for x in a["axes"]] == [1] and tuple(a["starts"]) == (0,)
                and tuple(a["ends"]) == (1,) and tuple(a["steps"]) == (1,))
    if node.op == "gather" and node.inputs[0] is v:
        idx = node.inputs[1].data
        return node.attrs["axis"] % rank == 1 and idx is not None and not idx.any()
    return False


# ---- attention masks -----------------------------------------------------------------------


def _check_masks(sites: list[Site], report: PassReport) -> str:
    """How padding is known: "none" (no mask, or one that masks nothing) or "keys" (a mask
    that only varies along the keys, i.e. padding). Masks of any other form stop the pass:
    after merging there is no token-by-token mask to carry them."""
    kinds = set()
    for site in sites:
        if len(site.attention.inputs) < 4:
            kinds.add("none")
            continue
        mask = site.attention.inputs[3]
        data = _constant(mask)
        if data is not None and not (data.any() if data.dtype != bool else (~data).any()):
            kinds.add("none")
        elif _query_invariant(mask):
            kinds.add("keys")
        else:
            raise PassError(NAME, f"the attention mask of {where(site.attention)} varies "
                                  "along the queries (causal, or another mask that is not "
                                  "padding): merged tokens would break it")
    if kinds == {"none", "keys"}:
        report.reject("masks", "some blocks have a padding mask and some none; padding is "
                               "taken from the first masked block")
    return "keys" if "keys" in kinds else "none"


def _constant(v: Value, limit: int = 1 << 22,
              memo: dict[int, np.ndarray | None] | None = None) -> np.ndarray | None:
    """The value of `v` if it is computed from constants alone (evaluated here, each value
    once)."""
    memo = {} if memo is None else memo
    if v.is_const:
        return v.data
    if id(v) in memo:
        return memo[id(v)]
    node, result = v.producer, None
    if node is not None and len(node.outputs) == 1 and v.type.size <= limit:
        args = [_constant(x, limit, memo) for x in node.inputs]
        if all(a is not None for a in args):
            result = np.asarray(get_schema(node.op).reference(node.attrs, *args)).astype(v.dtype)
    memo[id(v)] = result
    return result


def _query_invariant(v: Value) -> bool:
    """Whether a mask is the same for every query (axis -2): padding masks are."""
    if len(v.shape) < 2 or v.shape[-2] == 1:
        return True
    data = _constant(v)
    if data is not None:
        return bool((data == data[..., :1, :]).all())
    node = v.producer
    if node is None:
        return False
    if node.op in ("broadcast_to", "cast") or node.op in UNARY:
        return _query_invariant(node.inputs[0])
    if get_schema(node.op).doc == "elementwise" or node.op == "where":
        return all(_query_invariant(x) for x in node.inputs)
    return False


# ---- rewriting -------------------------------------------------------------------------------


@dataclass
class _Rebuild:
    """Re-emits the graph node by node; after the first reduction, shapes follow the tokens."""

    graph: Graph
    cfg: Config
    plan: dict[int, tuple[Site, int]]
    protect: int
    mask_kind: str
    restore_at: Value | None  # where the tokens are spread back (None: class-token head)
    new: Graph = field(init=False)
    env: dict[int, Value] = field(default_factory=dict)
    sizes: Value | None = None  # [B, N'] token sizes once reduction started
    total: Value | None = None  # [B, N', N] product of every plan so far
    bias: Value | None = None  # attention bias for the current sizes
    scope: str = ""  # of the nodes being added

    def run(self) -> Graph:
        g = self.new = Graph(self.graph.name)
        for v in self.graph.inputs:
            self.env[id(v)] = g.add_input(v.name, v.shape, v.dtype)
        for c in self.graph.constants:
            self.env[id(c)] = g.add_const(c.data, c.name)
        for node in self.graph.nodes:
            self._emit(node)
        g.set_outputs(self.env[id(v)] for v in self.graph.outputs)
        return g

    def _emit(self, node: Node) -> None:
        inputs = [self.env[id(v)] for v in node.inputs]
        if node.op == "attention" and inputs[1].shape != node.inputs[1].shape:
            inputs = inputs[:3] + [self._attention_bias()]
        try:
            attrs = _follow_tokens(node, inputs, self.protect)
            emitted = self.new.add_node(node.op, inputs, attrs, node.scope, node.name)
        except IRError as e:
            raise PassError(NAME, f"{where(node)} cannot follow the reduced token count: {e}"
                            ) from None
        for old, v in zip(node.outputs, emitted.outputs):
            self.env[id(old)] = v
        out = node.outputs[0]
        if id(out) in self.plan:
            self.env[id(out)] = self._reduce(*self.plan[id(out)], self.env[id(out)])
        if out is self.restore_at and self.total is not None:
            spread = self._op("transpose", self.total, perm=[0, 2, 1])
            self.env[id(out)] = self._op("matmul", spread, self.env[id(out)])

    def _op(self, op: str, *inputs: Value, **attrs) -> Value:
        return self.new.op(op, *inputs, scope=self.scope, **attrs)

    def _const(self, value: float, like: Value) -> Value:
        return self.new.add_const(np.asarray(value, dtype=like.dtype), "tome_const")

    def _reduce(self, site: Site, r: int, x: Value) -> Value:
        self.scope = f"{site.block.scope}.tome"
        if self.sizes is None:
            self.sizes = self._initial_sizes(site, x)
        b, n, _ = x.shape
        k = self.env[id(site.attention.inputs[1])]
        sizes3 = self._op("reshape", self.sizes, shape=[b, n, 1])
        if self.cfg.mode == "merge":
            plan = self._op("tome_plan", k, self.sizes, r=r, protect=self.protect)
            # padding weighs (almost) nothing: a real token merged with it stays exact
            weight = self._op("maximum", sizes3, self._const(1e-30, x))
            summed = self._op("matmul", plan, self._op("mul", x, weight))
            x = self._op("div", summed, self._op("matmul", plan, weight))
        else:
            q = self.env[id(site.attention.inputs[0])]
            plan = self._op("prune_plan", q, k, self.sizes, r=r, protect=self.protect,
                            scale=site.attention.attrs["scale"])
            x = self._op("matmul", plan, x)
        self.sizes = self._op("reshape", self._op("matmul", plan, sizes3), shape=[b, n - r])
        self.total = plan if self.total is None else self._op("matmul", plan, self.total)
        self.bias = None
        return x

    def _initial_sizes(self, site: Site, x: Value) -> Value:
        """1 per real token, 0 per padding token (from the block's key-padding mask)."""
        b, n, _ = x.shape
        if self.mask_kind == "none" or len(site.attention.inputs) < 4:
            return self.new.add_const(np.ones((b, n), dtype=x.dtype), "tome_sizes")
        mask = self.env[id(site.attention.inputs[3])]
        m4 = self._op("reshape", mask, shape=[1] * (4 - len(mask.shape)) + list(mask.shape))
        first = self._op("slice", m4, axes=[1, 2], starts=[0, 0], ends=[1, 1], steps=[1, 1])
        keys = self._op("reshape", first, shape=[m4.shape[0], n])
        if mask.dtype == "bool":
            sizes = self._op("cast", keys, dtype=x.dtype)
        else:  # additive: 0 where visible, very negative where padding
            sizes = self._op("exp", keys)
        return sizes if sizes.shape[0] == b else self._op("broadcast_to", sizes, shape=[b, n])

    def _attention_bias(self) -> Value:
        if self.bias is None:
            sizes = self.sizes
            if not self.cfg.proportional:
                sizes = self._op("minimum", sizes, self._const(1.0, sizes))
            b, n = sizes.shape
            self.bias = self._op("reshape", self._op("log", sizes), shape=[b, 1, 1, n])
        return self.bias


def _follow_tokens(node: Node, inputs: list[Value], protect: int) -> dict:
    """The node's attributes for inputs whose token count changed: reshape and broadcast
    shapes follow; ops that work along the token axis are refused."""
    changed = [(old, new) for old, new in zip(node.inputs, inputs) if old.shape != new.shape]
    if not changed:
        return node.attrs
    old, new = changed[0]
    axes = [i for i, (a, b) in enumerate(zip(old.shape, new.shape)) if a != b]
    if len(axes) != 1:
        raise IRError(f"input {old.type} became {new.type}")
    axis, attrs = axes[0], dict(node.attrs)
    if node.op == "reshape":
        attrs["shape"] = _reshaped(old.shape, new.shape[axis], axis, list(attrs["shape"]))
    elif node.op == "broadcast_to":
        shape = list(attrs["shape"])
        shape[len(shape) - len(old.shape) + axis] = new.shape[axis]
        attrs["shape"] = shape
    elif protect and axis == 1 and _selects_token0(node, old):
        pass  # the class token, kept first
    elif _along_axis(node, axis, len(old.shape)):
        raise IRError(f"{node.op} works along the token axis")
    return attrs


def _reshaped(old: tuple[int, ...], tokens: int, axis: int, shape: list[int]) -> list[int]:
    before = math.prod(old[:axis])
    for j in range(len(shape)):
        if math.prod(shape[:j]) == before and shape[j] == old[axis]:
            shape[j] = tokens
            return shape
    raise IRError(f"reshape to {shape} splits or merges the token axis")


def _along_axis(node: Node, axis: int, rank: int) -> bool:
    a = node.attrs
    if node.op in REDUCTIONS:
        return a["axes"] is None or axis in [x % rank for x in a["axes"]]
    if node.op in ("softmax", "log_softmax", "cumsum", "concat", "gather", "gather_elements",
                   "argmax", "argmin"):
        return a["axis"] % rank == axis
    if node.op == "slice":
        return axis in [x % rank for x in a["axes"]]
    if node.op == "pad":
        return any(a["pads"][axis::rank])
    return False
