"""Attention as one CPU kernel: scores, softmax and the product with the values per tile of
query rows, while the tile is in L1 and L2.

As three kernels (scores, softmax, product) the score matrix went through memory twice: at
DeiT-Tiny's 197 tokens and batch 8 it is 4 MB, over the L2 of these cores, and the product
with the values ran at 134 GFLOP/s against the projections' 190. One kernel also reads the
queries and values where the model keeps them, token-major ([batch, tokens, heads, dim]) or
still inside the merged q/k/v projection's output, and writes its output token-major where the
model transposes it so: the slicing and transposing copies around the attention (three input
kernels and one for the output, 5% of the ViT at batch 8) go, but k's transpose to k^T, a
kernel of its own (transposed_keys).
Measured on the 2-core AVX-512 host, ViT-DeiT-Tiny whole, against the three-kernel form in
turns: batch 1 3-4% faster (five runs), batch 8 4-11% (two runs).

Each parallel task takes `ROWS` query rows of one head:
- scores = q k^T for the rows, a register tile of ROWS x one or two vectors of keys at a time
  over the head dimension (k^T comes padded to whole vectors, see codegen/relax_lower.py);
- the scale and the masks (padded keys, causal, a mask input) applied once, as each score tile
  is stored from its registers; then the row maxima, exponentials and sums, the reductions as
  `lanes` partials per row;
- the product with the values over the real keys, ROWS x PRODUCT_COLUMNS outputs at a time in
  registers, multiplied by the rows' reciprocal sums as they are stored.
The query rows are padded to whole tiles (the padded rows reread the last query and are never
stored): a row predicate inside the loops kept LLVM from holding the product's accumulators in
registers (0.28 against 0.21 ms for a DeiT-Tiny layer at batch 1). Tiles of 4 x 64, 8 x 32,
4 x 32 and 6 x 32 timed alike (within noise, in turns); 8 x 32 holds 16 accumulators in both
products; 10, 12 and 16 rows were 1-3% slower (kernel alone, DeiT-Tiny at batch 8).
Scaling and masking the scores once instead of in both the max and the exponentials, and one
division per row: DeiT-Tiny's attention at batch 8 1.36 -> 1.34 ms per layer, MiniLM's (with
its additive mask) 1.37 -> 1.29 (kernel alone, with the one-vector key padding).

Used for float attention on CPU targets (codegen/relax_lower.py); the CPU
schedule (codegen/cpu_schedule.py) gives both kernels their schedules (SCHEDULES).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx, topi

ROWS = 8  # query rows per task, the height of both products' register tiles
PRODUCT_COLUMNS = 32  # head-dim columns of the product's tile where they divide the head dim
SCORES = "attn_scores"
MASKED = "attn_masked"
MAX = "attn_max"
SHIFT = "attn_shift"
SUM = "attn_sum"
INVERSE = "attn_inverse"
PRODUCT = "attn_product"
OUTPUT = "attn_out"
# iterators of a row reduction's partials block (rfactor puts the lane first: lane, batch,
# head, row, step) and of the block that sums them (lane, batch, head, row)
LANE, ROW, STEP = 0, 3, 4
# opaque to FuseOps (op_pattern 8): nothing is fused into the kernels, whose schedules know
# their blocks; named for the CPU schedule, which gives each its schedule (see SCHEDULES)
KERNEL_ATTRS = {"op_pattern": 8, "honer.kernel": "attention"}
KEYS_KERNEL_ATTRS = {"op_pattern": 8, "honer.kernel": "transposed_keys"}
KEY_ROWS = "keys_rows"
TRANSPOSED = "keys_transposed"
TOKEN_MAJOR = "bshd"  # [batch, tokens, heads, dim]
HEAD_MAJOR = "bhsd"  # [batch, heads, tokens, dim]
PACKED = "packed"  # token-major heads inside [batch, tokens, channels], see Operand


@dataclass(frozen=True)
class Operand:
    """Where the kernel reads q or v: head-major, token-major, or token-major heads packed in
    a [batch, tokens, channels] tensor from channel `offset` on (the q, k and v of a merged
    projection's output, sliced and viewed per head)."""
    layout: str
    offset: int = 0

    def at(self, tensor: te.Tensor, dim: int, b, token, h, d):
        if self.layout == PACKED:
            return tensor[b, token, self.offset + h * dim + d]
        if self.layout == TOKEN_MAJOR:
            return tensor[b, token, h, d]
        return tensor[b, h, token, d]


@dataclass(frozen=True)
class AttentionShape:
    """What the kernel computes, besides its inputs."""
    batch: int
    heads: int
    kv_heads: int
    queries: int
    keys: int  # real keys (k^T has more columns: padding to whole tiles)
    dim: int  # of q and k
    value_dim: int
    scale: float
    causal: bool
    q: Operand
    v: Operand
    token_major_out: bool
    mask: str = ""  # a mask input: "bool" (False: masked) or "add" (added to the scores)


def fused_attention(q: te.Tensor, kt: te.Tensor, v: te.Tensor, *mask: te.Tensor,
                    shape: AttentionShape) -> te.Tensor:
    """softmax(q k^T * scale, masked) v for q and v where `shape` says, k^T as
    [batch, kv_heads, dim, padded keys]; heads share a k/v head in groups of
    heads / kv_heads (grouped-query attention). A mask input is 4-d and broadcasts to
    [batch, heads, queries, keys]."""
    batch, heads, queries, dim, dv = (shape.batch, shape.heads, shape.queries, shape.dim,
                                      shape.value_dim)
    padded_keys = int(kt.shape[3])
    rep = heads // shape.kv_heads
    rows = min(ROWS, queries)
    padded_rows = -(-queries // rows) * rows
    dt = q.dtype
    d = te.reduce_axis((0, dim), "d")
    scores = te.compute(
        (batch, heads, padded_rows, padded_keys),
        lambda b, h, i, j: te.sum(shape.q.at(q, dim, b, tirx.min(i, queries - 1), h, d)
                                  * kt[b, h // rep, d, j], axis=d), name=SCORES)
    offset = shape.keys - queries  # a causal query sees the keys up to its own position

    def masking(b, h, i, j):
        allowed = j < shape.keys
        if shape.causal:
            allowed = tirx.all(allowed, j <= i + offset)
        given = _mask_at(mask[0], b, h, tirx.min(i, queries - 1),
                         tirx.min(j, shape.keys - 1)) if mask else None  # clamped: padded
        if shape.mask == "bool":
            allowed = tirx.all(allowed, given)
        score = tirx.Select(allowed, scores[b, h, i, j] * tirx.const(shape.scale, dt),
                            tirx.const(-np.inf, dt))
        # an added mask goes outside the Select: inside its true branch TVM's simplifier
        # assumes the condition (j < keys) and drops the clamp, and the padded keys' lanes
        # would read past the mask's end
        return score + given if shape.mask == "add" else score

    # scaled and masked once, as the score tile leaves its registers (the row max and the
    # exponentials both read them)
    masked = te.compute(scores.shape, masking, name=MASKED)
    j = te.reduce_axis((0, padded_keys), "j")
    row_max = te.compute((batch, heads, padded_rows),
                         lambda b, h, i: te.max(masked[b, h, i, j], axis=j), name=MAX)
    exps = topi.fast_exp(te.compute((batch, heads, padded_rows, padded_keys),
                                    lambda b, h, i, j: masked[b, h, i, j] - row_max[b, h, i],
                                    name=SHIFT))
    j2 = te.reduce_axis((0, padded_keys), "j2")
    row_sum = te.compute((batch, heads, padded_rows),
                         lambda b, h, i: te.sum(exps[b, h, i, j2], axis=j2), name=SUM)
    # one division per row, the outputs multiplied by it (a vector division per output vector
    # has several times a multiplication's throughput cost)
    inverse = te.compute(row_sum.shape, lambda b, h, i: tirx.const(1, dt) / row_sum[b, h, i],
                         name=INVERSE)
    jr = te.reduce_axis((0, shape.keys), "jr")
    product = te.compute(
        (batch, heads, padded_rows, dv),
        lambda b, h, i, e: te.sum(exps[b, h, i, jr] * shape.v.at(v, dv, b, jr, h // rep, e),
                                  axis=jr), name=PRODUCT)
    if shape.token_major_out:
        return te.compute((batch, queries, heads, dv),
                          lambda b, i, h, e: product[b, h, i, e] * inverse[b, h, i], name=OUTPUT)
    return te.compute((batch, heads, queries, dv),
                      lambda b, h, i, e: product[b, h, i, e] * inverse[b, h, i], name=OUTPUT)


def transposed_keys(k: te.Tensor, operand: Operand, kv_heads: int, keys: int, dim: int,
                    padded_keys: int) -> te.Tensor:
    """k^T as the attention kernel reads it: [batch, kv_heads, dim, padded_keys], zeros past
    the real keys, from k where `operand` says. Staged through rows of k ([.., key, dim]):
    the schedule moves blocks of lanes x lanes through registers, read along the head
    dimension and written along the keys (schedule_transposed_keys)."""
    batch = int(k.shape[0])
    rows = te.compute((batch, kv_heads, padded_keys, dim),
                      lambda b, h, t, d: operand.at(k, dim, b, tirx.min(t, keys - 1), h, d),
                      name=KEY_ROWS)  # clamped: the padded keys reread the last, then zeroed
    zero = tirx.const(0, k.dtype)
    return te.compute((batch, kv_heads, dim, padded_keys),
                      lambda b, h, d, t: tirx.Select(t < keys, rows[b, h, t, d], zero),
                      name=TRANSPOSED)


def schedule_transposed_keys(sch: s_tir.Schedule, lanes: int) -> None:
    """Blocks of lanes keys x lanes dims: each read from k in whole vectors into a local
    tile, then written out one vector of keys per dim. For DeiT-Tiny's k at batch 8 (8 x 3 x
    64 x 208) 0.044 ms against 0.097 as one flat elementwise loop of strided gathers, whose
    lane indices took divisions (kernel alone)."""
    out, rows = sch.get_sblock(TRANSPOSED), sch.get_sblock(KEY_ROWS)
    b, h, d, t = sch.get_loops(out)
    block = lanes if _extent(sch, d) % lanes == 0 else 1
    d_tile, d_in = sch.split(d, [None, block])
    t_tile, t_in = sch.split(t, [None, lanes])  # the padded keys are whole vectors
    sch.reorder(b, h, d_tile, t_tile, d_in, t_in)
    sch.parallel(sch.fuse(b, h, d_tile))
    sch.set_scope(rows, 0, "local")
    sch.compute_at(rows, t_tile)
    key, dims = sch.get_loops(rows)[-2:]
    sch.unroll(key)
    sch.vectorize(dims)
    sch.unroll(d_in)
    sch.vectorize(t_in)


def honer_kernel(func: tirx.PrimFunc) -> str:
    """The name of a kernel honer writes and schedules itself, "" for others."""
    return str((func.attrs or {}).get("honer.kernel", ""))


def _mask_at(mask: te.Tensor, *index):
    """mask[index] broadcast: its axes of extent 1 read index 0."""
    return mask[tuple(0 if int(n) == 1 else k for n, k in zip(mask.shape, index))]


def schedule_attention(sch: s_tir.Schedule, lanes: int) -> None:
    """The schedule described above, for the kernel fused_attention builds (keys padded to a
    multiple of `lanes`)."""
    sch.compute_inline(sch.get_sblock(SHIFT))
    exps = sch.get_producers(sch.get_sblock(SUM))[0]
    partials = [_lane_partials(sch, sch.get_sblock(name), lanes) for name in (MAX, SUM)]
    out = sch.get_sblock(OUTPUT)
    b, x, y, e = sch.get_loops(out)
    # which of the middle loops walks the heads: the one indexing the rows' ([b, h, i])
    # reciprocal sums
    stmt = sch.get(out)
    inverses = next(r for r in stmt.reads if r.source.name.startswith(INVERSE))
    h, i = (x, y) if inverses.region[1].min.same_as(stmt.iter_vars[1].var) else (y, x)
    product = sch.get_sblock(PRODUCT)
    tile = min(ROWS, _extent(sch, i))
    io, ii = sch.split(i, [None, tile])
    sch.reorder(b, h, io, ii, e)
    task = sch.fuse(b, h, io)
    sch.parallel(task)
    sch.vectorize(e)
    # everything else per task, last producer first
    sch.compute_at(product, task, preserve_unit_loops=True)
    for block in [sch.get_sblock(INVERSE), sch.get_sblock(SUM), partials[1], exps,
                  sch.get_sblock(MAX), partials[0], sch.get_sblock(MASKED),
                  sch.get_sblock(SCORES)]:
        sch.compute_at(block, task, preserve_unit_loops=True)
    _schedule_product(sch, product)
    _schedule_scores(sch, sch.get_sblock(SCORES), lanes)
    sch.set_scope(exps, 0, "local")
    sch.vectorize(sch.get_loops(exps)[-1])
    for partial in partials:
        # the loops are found by the iterator they run, not by position: compute_at keeps the
        # unit batch and head loops among them (taking the last three had vectorized a unit
        # loop and left the max and sum as scalar loops over gathered lanes, 0.27 against
        # 0.21 ms for a DeiT-Tiny layer alone)
        lane, row, step = (_loop_running(sch, partial, k) for k in (LANE, ROW, STEP))
        sch.reorder(row, step, lane)
        sch.vectorize(lane)
        final = sch.get_consumers(partial)[0]
        sch.reorder(_loop_running(sch, final, ROW), _loop_running(sch, final, LANE))


def _loop_running(sch: s_tir.Schedule, block, iterator: int):
    """The innermost loop that the block's `iterator` is bound to (a row is bound to the task
    loop outside too)."""
    loops = sch.get_loops(block)
    realize = sch.get(loops[-1]).body
    used = tirx.analysis.undefined_vars(realize.iter_values[iterator])
    return next(lp for lp in reversed(loops)
                if any(var.same_as(sch.get(lp).loop_var) for var in used))


def _lane_partials(sch: s_tir.Schedule, block, lanes: int):
    """A row reduction as `lanes` partials per row (one vector per step), then one value."""
    _, lane = sch.split(sch.get_loops(block)[-1], [None, lanes])
    return sch.rfactor(lane, factor_axis=3)


def _schedule_scores(sch: s_tir.Schedule, block, lanes: int) -> None:
    """ROWS x (one or two vectors of) keys register tiles over the head dimension, like the
    matmul rule's: two where they divide the padded keys (128), else one (208 for 197 keys)."""
    rows, keys, dim = sch.get_loops(block)[-3:]
    width = 2 * lanes if _extent(sch, keys) % (2 * lanes) == 0 else lanes
    key_tile, key = sch.split(keys, [None, width])
    sch.reorder(key_tile, dim, rows, key)
    sch.unroll(rows)
    sch.vectorize(key)
    acc = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(acc, key_tile)
    sch.vectorize(sch.get_loops(acc)[-1])
    # rows unrolled: with a loop over them LLVM kept the tile in a stack buffer too, zeroed
    # and stored for every tile of 64 FMAs per row (DeiT-Tiny's attention at batch 8 in the
    # model: 18.3 -> 17.2 ms)
    sch.unroll(sch.get_loops(acc)[-2])
    sch.reverse_compute_inline(sch.get_sblock(MASKED))  # scale and mask on the write-back
    sch.decompose_reduction(block, dim)


def _schedule_product(sch: s_tir.Schedule, block) -> None:
    """ROWS x (up to PRODUCT_COLUMNS) accumulators in registers over the keys."""
    sch.set_scope(block, 0, "local")
    rows, cols, keys = sch.get_loops(block)[-3:]
    if _extent(sch, cols) > PRODUCT_COLUMNS and _extent(sch, cols) % PRODUCT_COLUMNS == 0:
        col_tile, cols = sch.split(cols, [None, PRODUCT_COLUMNS])
        sch.reorder(col_tile, keys, rows, cols)
    else:
        sch.reorder(keys, rows, cols)
    sch.unroll(rows)
    sch.vectorize(cols)
    sch.decompose_reduction(block, keys)


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


SCHEDULES = {"attention": schedule_attention, "transposed_keys": schedule_transposed_keys}
