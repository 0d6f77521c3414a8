"""The CPU schedule of int4 weight-only matrix-vector products (decoding: fewer rows than a
register tile), the `dequant_gemv` kernels of relax_lower's `_dequant_gemv`.

There the weights' decoding, not the multiply-adds, bounds the kernel, so the schedule keeps
everything but the weight stream in registers: per panel of output channels (one task per
panel, over the cores), per group of inputs, the group's dot products for every row are summed
in a register tile (the level of each weight turned into a float once, used for all rows),
then scaled into the row's accumulator, which is written back once, with its epilogue (bias,
residual add), at the end of the panel.
"""

from __future__ import annotations

from tvm import s_tir

from .relax_lower import GEMV_DOT, GEMV_KERNEL
from .tiles import local_accumulator, vectorized_init

UNROLL = 4  # pairs of inputs decoded per loop iteration (the loop body stays small)


def find_gemv(sch: s_tir.Schedule):
    """The dequant_gemv block of the function, or None."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint == GEMV_KERNEL:
            return block
    return None


def schedule_gemv(sch: s_tir.Schedule, block) -> set[str]:
    """Schedules the gemv block, its dot-product block and its epilogue; returns the names
    of the blocks it placed."""
    dot = next(b for b in sch.get_producers(block) if sch.get(b).name_hint == GEMV_DOT)
    panel = int(sch.get(dot).writes[0].source.shape[-1])
    m, n, g = sch.get_loops(block)
    j, p = sch.split(n, [None, panel])
    sch.reorder(j, g, m, p)
    acc = local_accumulator(sch, block)
    sch.reverse_compute_at(acc, j)
    sch.compute_at(dot, g)
    sch.set_scope(dot, 0, "local")
    # compute_at made loops for the dot's extents above one under g: (rows,) lanes, inputs
    *dm, dp, dt = sch.get_loops(dot)[len(sch.get_loops(block)) - 2:]
    sch.reorder(dt, *dm, dp)
    if int(sch.get(dt).extent) % UNROLL == 0:
        dt, dt_inner = sch.split(dt, [None, UNROLL])
        sch.unroll(dt_inner)
    for loop in dm:
        sch.unroll(loop)
    sch.vectorize(dp)
    sch.unroll(m)
    sch.vectorize(p)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.parallel(j)
    dot_init = vectorized_init(sch, dot, dt)
    init = vectorized_init(sch, block, g)
    return {sch.get(b).name_hint for b in (block, init, acc, dot, dot_init)}
