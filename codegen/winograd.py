"""Winograd convolution F(m x m, 3x3) for CPUs: 3x3 stride-1 convs as matrix products.

Each m x m block of outputs (a "tile") of a 3x3 conv is computed from the a x a input window
under it (a = m + 2) with a^2 multiplies per (input, output) channel pair instead of 9 m^2
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

with g the 3x3 kernel and d the window: F(2x2, 3x3) does 16 multiplies where the direct conv
does 36, F(4x4, 3x3) 36 where it does 144. The kernel side, U = G g G^T, is computed once
when the weights are stored (layout "winograd<m>", [a^2, O, C]); a call runs two kernels:
1. `winograd_product`: the input transform V[e*a + v, c, tile] = (B^T d B)[e, v] for every
   tile and channel, then M[ev] = U[ev] @ V[ev], a^2 independent matrix products over the
   channels, which the CPU schedule's contraction rule tiles like any matmul;
2. `winograd_output`: Y = A^T M A for every tile, with the conv's epilogue (bias, activation,
   residual add) in the same loop.
The result differs from the direct conv by float rounding only, more with more channels: with
512 channels, against a float64 reference, 8e-7 of the output scale for F(2x2), 1.5e-5 for
F(4x4) (whose transforms scale values by up to 8), 2.6e-6 for the direct conv.

The activations stay NCHW, so a tile's pixels are m apart along a row. The transforms run one
tile row per loop iteration with the tile's values unrolled in the body, and LLVM vectorizes
that loop from tile to tile: the input transform reads a padded copy of the input whose rows
are dealt into m phases, the output transform writes the row's tiles to a small buffer and
then deals them into the output's m rows (see input_transform and output_transform).
Used on CPU targets (those with weight panels) by codegen/relax_lower.py; the CPU schedule
(codegen/cpu_schedule.py) calls schedule_transforms for the two transform kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import s_tir, te, tirx

PAD_BLOCK = "winograd_pad"
INPUT_BLOCK = "winograd_input"
PRODUCT_BLOCK = "winograd_product"
OUTPUT_BLOCK = "winograd_output"
TILE_ROWS = "winograd_tile_rows"
# blocks the generic rules must not inline (the transforms have their own schedule)
KEEP_BLOCKS = (PAD_BLOCK, INPUT_BLOCK, TILE_ROWS, OUTPUT_BLOCK)


@dataclass(frozen=True)
class Algorithm:
    """F(m x m, 3x3): its transform matrices and the fewest tiles it is used for."""
    m: int
    input_t: np.ndarray  # B^T, a x a
    kernel: np.ndarray  # G, a x 3
    output_t: np.ndarray  # A^T, m x a
    min_tiles: int

    @property
    def alpha(self) -> int:
        return self.m + 2


# Lavin & Gray's matrices (interpolation points 0, -1, 1 and infinity; F(4x4) adds 2, -2).
# Tile minimums: with fewer tiles the products are too small to keep two cores busy, and U
# (a^2 / 9 the size of the kernel it replaces) is read for too few tiles: at batch 1 a model's
# weights come from memory, not cache. ResNet-18 at batch 1, whole model, builds timed in
# turns (benchmarks/winograd_choice.py), ms in two runs: these minimums 31.2 / 29.8; F(4x4)
# down to 16 tiles (its 14 x 14 stage) 33.5 / 29.3; F(2x2) from 64 tiles only 34.2 / 30.3;
# F(2x2) alone 35.3 / 30.9; direct convs only 41.4 / 35.1. The first three are within the
# machine's noise of each other; of those, these minimums store the least weight (F(4x4) on
# the 14 x 14 stage would quadruple its 7 MB). The 7 x 7 stage as 16 tiles of F(2x2) took
# 2.36 ms against the direct conv's 2.17.
F2 = Algorithm(
    m=2,
    input_t=np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
    kernel=np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
    output_t=np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float),
    min_tiles=32)
F4 = Algorithm(
    m=4,
    input_t=np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                      [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
    kernel=np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
    output_t=np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                       [0, 1, -1, 8, -8, 1]], float),
    min_tiles=32)
ALGORITHMS = {a.m: a for a in (F4, F2)}  # preferred first: fewer multiplies


def _tiles(out_shape: tuple[int, ...], m: int) -> int:
    n, _, oh, ow = out_shape
    return n * -(-oh // m) * -(-ow // m)


def choose(kernel_shape: tuple[int, ...], attrs: dict[str, Any], out_shape: tuple[int, ...],
           dtype: str) -> int:
    """The tile size m a conv is computed with the Winograd way, 0 for the direct way: only
    float32 ungrouped 2-D 3x3 convs of stride and dilation 1 (an integer conv would not stay
    exact, and the transforms are written for float32), with enough tiles to fill the
    products and at least two tiles each way (one tile of 4 x 4 for a 1 x 1 output would
    do 36 multiplies where the direct conv does 9): the first algorithm that qualifies."""
    if dtype != "float32" or len(kernel_shape) != 4 or tuple(kernel_shape[2:]) != (3, 3) \
            or attrs["groups"] != 1:
        return 0
    if tuple(attrs["strides"]) != (1, 1) or tuple(attrs["dilation"]) != (1, 1):
        return 0
    return next((a.m for a in ALGORITHMS.values() if _tiles(out_shape, a.m) >= a.min_tiles
                 and min(out_shape[2:]) > a.m), 0)


def transform_kernel(w: np.ndarray, m: int) -> np.ndarray:
    """[O, C, 3, 3] -> U = G g G^T as [a^2, O, C] (row e * a + v of the a x a transform)."""
    g = ALGORITHMS[m].kernel
    o, c = w.shape[:2]
    u = np.einsum("ai,ocij,bj->aboc", g, w.astype(np.float64), g, optimize=True)
    return u.reshape(len(g) ** 2, o, c).astype(w.dtype)


def _combine(matrix: np.ndarray, k, values: list):
    """Row k of `matrix` applied to `values`, for a loop variable k (a constant once its loop
    is unrolled, and then the other rows' expressions fold away)."""
    rows = [_weighted_sum(row, values) for row in matrix]
    out = rows[-1]
    for pos in range(len(rows) - 2, -1, -1):
        out = tirx.Select(k == pos, rows[pos], out)
    return out


def _weighted_sum(coefficients: np.ndarray, values: list):
    """sum of c * v over the nonzero coefficients, without multiplies by +-1."""
    total = None
    for c, v in zip(coefficients, values):
        if c == 0:
            continue
        term = v if abs(c) == 1 else v * float(abs(c))
        if total is None:
            total = term if c > 0 else -term
        else:
            total = total + term if c > 0 else total - term
    return total


def tile_grid(out_shape: tuple[int, ...], m: int, panel: int) -> tuple[int, int]:
    """(tile rows, tile slots per row) of an output [N, O, OH, OW]: at least its tiles each
    way, and as few more as make the tile count a multiple of `panel`. Where the products
    run the tiles on the vector lanes, one vector per register tile ran at 70 GFLOP/s against
    125 for two (ResNet's 7 x 7 tiles at batch 1: 49 tiles, padded to 8 x 8). The extra
    tiles read the input's padding and their outputs are never read."""
    n, _, oh, ow = out_shape
    th, tw = -(-oh // m), -(-ow // m)
    return min(((r, c) for r in range(th, th + panel + 1) for c in range(tw, tw + panel + 1)
                if (n * r * c) % panel == 0), key=lambda rc: (rc[0] * rc[1], rc[0]))


def input_transform(x: te.Tensor, pads: list[int], out_shape: tuple[int, ...], m: int,
                    panel: int) -> te.Tensor:
    """V [a^2, C, tile slots] from x [N, C, H, W]; `pads` (top, left, bottom, right) as the
    conv's. Slots past the last tiles read zeros of the padding.

    The input is first copied, padded, with each row dealt into m phases: phase k of row r
    holds columns k, m + k, 2m + k, ... So the value at column m * col + j of a tile's window
    is phase j % m at position col + j // m, and the transform's loads run along contiguous
    memory from tile to tile (read from the plain padded rows, they were m apart and LLVM
    left the F(4x4) transform scalar: 0.67 ms for ResNet's first stage at batch 1)."""
    algo = ALGORITHMS[m]
    n_, c, h, w = (int(d) for d in x.shape)
    rows, slots = tile_grid(out_shape, m, panel)
    top, left = pads[0], pads[1]

    def phased(n, ch, r, k, q):
        y, col = r - top, m * q + k - left
        inside = tirx.all(y >= 0, y < h, col >= 0, col < w)
        return tirx.if_then_else(inside, x[n, ch, y, col], tirx.const(0, x.dtype))

    # rows the last tiles' windows reach; one more position per phase for the window overlap
    xp = te.compute((n_, c, m * rows + 2, m, slots + 1), phased, name=PAD_BLOCK)

    def at(ev, ch, t):
        n, row, col = t // (rows * slots), t // slots % rows, t % slots

        def window(i, j):
            return xp[n, ch, m * row + i, j % m, col + j // m]

        columns = [_combine(algo.input_t, ev // algo.alpha,
                            [window(i, j) for i in range(algo.alpha)])
                   for j in range(algo.alpha)]
        return _combine(algo.input_t, ev % algo.alpha, columns)

    return te.compute((algo.alpha ** 2, c, n_ * rows * slots), at, name=INPUT_BLOCK)


def transformed_product(x: te.Tensor, u: te.Tensor, pads: list[int],
                        out_shape: tuple[int, ...], panel: int) -> te.Tensor:
    """M [a^2, O, tile slots] = U [a^2, O, C] @ V [a^2, C, tile slots], one product per entry
    of the transform; V is made in the same kernel (as an input of its own kernel, TVM's
    FuseOps would fuse the previous conv's output transform and activation into it)."""
    alpha2, o, c = (int(d) for d in u.shape)
    v = input_transform(x, pads, out_shape, math.isqrt(alpha2) - 2, panel)
    rc = te.reduce_axis((0, c), name="rc")
    return te.compute((alpha2, o, int(v.shape[2])),
                      lambda ev, oc, t: te.sum(u[ev, oc, rc] * v[ev, rc, t], axis=rc),
                      name=PRODUCT_BLOCK)


def output_transform(mt: te.Tensor, out_shape: tuple[int, ...], panel: int) -> te.Tensor:
    """Y [N, O, OH, OW] = A^T M A for every tile (the last tile row or column cut short where
    m does not divide the output size). The tiles of a row are transformed together into
    TILE_ROWS [N, O, tile rows, m, m, slots] (each output of a tile contiguous from tile to
    tile, as M is), then dealt into the output's rows, m apart: computed straight into the
    output, F(4x4)'s transform stayed scalar (0.77 ms for ResNet's first stage at batch 1)."""
    algo = ALGORITHMS[math.isqrt(int(mt.shape[0])) - 2]
    m, alpha = algo.m, algo.alpha
    rows, slots = tile_grid(out_shape, m, panel)
    n_ = int(out_shape[0])

    def at(n, oc, row, i, j, col):
        t = n * rows * slots + row * slots + col
        columns = [_combine(algo.output_t, j, [mt[e * alpha + v, oc, t] for v in range(alpha)])
                   for e in range(alpha)]
        return _combine(algo.output_t, i, columns)

    tiles = te.compute((n_, int(mt.shape[1]), rows, m, m, slots), at, name=TILE_ROWS)
    return te.compute(tuple(int(d) for d in out_shape),
                      lambda n, oc, y, x: tiles[n, oc, y // m, y % m, x % m, x // m],
                      name=OUTPUT_BLOCK)


# ---- CPU schedule of the two transforms (the product takes the contraction rule) ------------

def schedule_transforms(sch: s_tir.Schedule) -> set[str]:
    """Schedules the function's Winograd transform blocks (FuseOps can put two convs' output
    transforms in one kernel, the second's blocks then named with a number); returns the
    names of the blocks placed (empty if none)."""
    placed: set[str] = set()
    # by name: moving an epilogue into a transform removes blocks the list would still hold
    for name in [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]:
        if role(name) == INPUT_BLOCK:
            placed |= {name, *_schedule_input(sch, sch.get_sblock(name))}
        elif role(name) == OUTPUT_BLOCK:
            placed |= {name, *_schedule_output(sch, sch.get_sblock(name))}
    return placed


def role(name: str) -> str:
    """Which Winograd block a block is, from its name ("" for none)."""
    base = name.rstrip("0123456789")
    return base if base in KEEP_BLOCKS else ""


def _schedule_input(sch: s_tir.Schedule, block) -> list[str]:
    """One tile row (one channel) per loop iteration: the a^2 entries of a tile unrolled in
    the body, so the window's loads are shared and LLVM vectorizes along the row. The phased
    copy of the input is made first, in parallel rows. Returns the copy's block name."""
    ev, ch, t = sch.get_loops(block)
    alpha = math.isqrt(_extent(sch, ev))
    (pad,) = sch.get_producers(block)
    _, _, padded_rows, _, positions = sch.get(pad).writes[0].source.shape
    m = alpha - 2
    e, v = sch.split(ev, [alpha, alpha])
    n, row, col = sch.split(t, [None, (int(padded_rows) - 2) // m, int(positions) - 1])
    sch.reorder(n, ch, row, col, e, v)
    sch.parallel(sch.fuse(n, ch, row))
    sch.unroll(e)
    sch.unroll(v)
    loops = sch.get_loops(pad)
    sch.parallel(sch.fuse(*loops[:3]))
    sch.unroll(loops[3])
    return [sch.get(pad).name_hint]


def _schedule_output(sch: s_tir.Schedule, block) -> list[str]:
    """The epilogue (bias, activation, residual) moved into the output's loop where it is
    elementwise on this output alone (a concat or a sum of two convs' outputs stays a block of
    its own). Per tile row (in parallel), its tiles are transformed, a tile per iteration with
    its outputs unrolled (LLVM vectorizes along the row), then dealt into the output's m rows
    with the epilogue. Returns the name of the tile-row block."""
    (tiles,) = sch.get_producers(block)
    m = _extent(sch, sch.get_loops(tiles)[3])
    while consumers := sch.get_consumers(block):
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            break
    n, oc, y, x = sch.get_loops(block)
    row, i = sch.split(y, [None, m])
    col, j = sch.split(x, [None, m])
    sch.reorder(n, oc, row, i, col, j)
    task = sch.fuse(n, oc, row)
    sch.parallel(task)
    sch.unroll(j)
    sch.compute_at(tiles, task, preserve_unit_loops=True)
    ti, tj, tcol = sch.get_loops(tiles)[-3:]
    sch.reorder(tcol, ti, tj)
    sch.unroll(ti)
    sch.unroll(tj)
    return [sch.get(tiles).name_hint]


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)
