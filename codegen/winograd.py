"""Winograd convolution F(m x m, 3x3) for CPUs: 3x3 stride-1 convs as matrix products.

Each m x m block of outputs (a "tile") of a 3x3 conv is computed from the a x a input window
under it (a = m + 2) with a^2 multiplies per (input, output) channel pair instead of 9 m^2
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

with g the 3x3 kernel and d the window: F(2x2, 3x3) does 16 multiplies where the direct conv
does 36, F(4x4, 3x3) 36 where it does 144. The kernel side, U = G g G^T, is computed once
when the weights are stored (layout "winograd<m>", [a^2, O, C]). A call is one kernel
(fused_conv, scheduled by schedule_fused), parallel over tasks; each task takes a block of
tiles (whole tile rows of an image, or whole images) for one group of output channels and
1. copies the input rows its block reads, padded and with each row dealt into m phases;
2. transforms them: V[ev, c, tile] = (B^T d B)[e, v] for its tiles and every channel;
3. multiplies: M[ev] = U[ev] @ V[ev], a^2 matrix products over the channels, register-tiled;
4. transforms back, Y = A^T M A per tile, and writes the block's output rows with the conv's
   epilogue (bias, activation, residual add).
V and M live and die in the task, in its core's L2: with the three stages as kernels of their
own, splitting the work three different ways, about half of V and M passed between the two
cores of these VMs on every call (3.6 MB per 64-channel conv of ResNet-18 at batch 1). When
the host places the VM's two vCPUs far apart, each such cache line costs tens of ns, and
ResNet-18 went from 16 to 21 ms; fused it is 15.4 ms near, 17.6 far (benchmarks/core_distance.py).
The result differs from the direct conv by float rounding only, more with more channels: with
512 channels, against a float64 reference, 8e-7 of the output scale for F(2x2), 1.5e-5 for
F(4x4) (whose transforms scale values by up to 8), 2.6e-6 for the direct conv.

The activations stay NCHW, so a tile's pixels are m apart along a row. The transforms run one
tile row per loop iteration with the tile's values unrolled in the body, and LLVM vectorizes
that loop from tile to tile: the input transform reads the phased copy (see _phased_input),
the output transform writes the block's tiles to a small buffer and then deals them into the
output's m rows. Used on CPU targets (those with weight panels) by codegen/relax_lower.py;
the CPU schedule (codegen/cpu_schedule.py) calls schedule_fused for these kernels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import s_tir, te, tirx

from .tiles import local_accumulator, vectorized_init

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


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


# ---- the conv as one kernel: tasks over blocks of tiles, V and M private to each -------------

TASK_MULTIPLE = 2  # tasks per conv made a multiple of this (the cores of the machines here)


# A task re-reads its group's share of U once per block of tiles: shares up to this size come
# from L2 or L3 again. Larger ones (ResNet's 512-channel convs at batch 8: 19 MB per half)
# would come from memory every time, so those convs take all tiles in one block.
CACHED_WEIGHT_BYTES = 4 << 20


@dataclass(frozen=True)
class Grid:
    """The tiles of a Winograd conv and its tasks. Per image `rows` x `slots` tiles (at least
    the output's, the extra ones reading padding); a task transforms a block of
    `images` x `block_rows` x `slots` tiles (block_rows < rows only when images is 1) for
    the output channels of one of `groups`."""
    rows: int
    slots: int
    block_rows: int
    images: int
    groups: int

    @property
    def block_tiles(self) -> int:
        return self.images * self.block_rows * self.slots


def weight_heavy(out_shape: tuple[int, ...], m: int) -> bool:
    """Whether U (a^2 x O x C) outweighs V (a^2 x C x tiles): the tasks then split the
    output channels first, so that each reads only its share of U."""
    n, o, oh, ow = out_shape
    return o > n * -(-oh // m) * -(-ow // m)


def fused_grid(out_shape: tuple[int, ...], in_channels: int, m: int, vector: int) -> Grid:
    """The fewest padded tiles in blocks of whole vectors of tiles, then the smallest blocks
    (the most tasks, each with its V and M in L2), and output-channel groups where the
    blocks alone do not split evenly or the conv is weight-heavy. A weight-heavy conv whose
    share of U would not stay cached takes all tiles in one block."""
    n, o, oh, ow = out_shape
    th, tw = -(-oh // m), -(-ow // m)
    heavy = weight_heavy(out_shape, m)
    groups = TASK_MULTIPLE if o % (8 * TASK_MULTIPLE) == 0 else 1
    share = (m + 2) ** 2 * o * in_channels * 4 // groups
    one_block = heavy and share > CACHED_WEIGHT_BYTES
    best = None
    for slots in range(tw, tw + vector + 1):
        for rows in range(th, th + vector + 1):
            if one_block:
                blocks = [(rows, n)]
            else:
                blocks = [(d, 1) for d in _divisors(rows)] \
                    + [(rows, d) for d in _divisors(n) if d > 1]
            for block_rows, images in blocks:
                tiles = images * block_rows * slots
                key = (n * rows * slots, tiles)
                if tiles % vector == 0 and (best is None or key < best[0]):
                    best = (key, Grid(rows, slots, block_rows, images, 1))
    grid = best[1]
    blocks = n * grid.rows // (grid.images * grid.block_rows)
    if heavy or blocks % TASK_MULTIPLE:
        grid = dataclasses.replace(grid, groups=groups)
    return grid


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def fused_conv(x: te.Tensor, u: te.Tensor, pads: list[int], out_shape: tuple[int, ...],
               vector: int) -> te.Tensor:
    """Y [N, O, OH, OW] = A^T [U (B^T d B)] A, one kernel (see schedule_fused). V [blocks of
    images, blocks of rows, a^2, C, block tiles] and M [..., group, a^2, O / groups, block
    tiles] are indexed by task, so each task computes and reads only its own. Tiles past
    the output read zeros of the padding, and their outputs are never read."""
    alpha2, o, c = (int(d) for d in u.shape)
    algo = ALGORITHMS[math.isqrt(alpha2) - 2]
    m, alpha = algo.m, algo.alpha
    n_ = int(x.shape[0])
    grid = fused_grid(out_shape, c, m, vector)
    xp = _phased_input(x, pads, m, grid)
    locate = _block_tile(grid)

    def transformed(nb, rb, ev, ch, t):
        n, row, col = locate(nb, rb, t)

        def window(i, j):
            return xp[n, ch, m * row + i, j % m, col + j // m]

        columns = [_combine(algo.input_t, ev // alpha, [window(i, j) for i in range(alpha)])
                   for j in range(alpha)]
        return _combine(algo.input_t, ev % alpha, columns)

    image_blocks, row_blocks = n_ // grid.images, grid.rows // grid.block_rows
    v = te.compute((image_blocks, row_blocks, alpha2, c, grid.block_tiles), transformed,
                   name=INPUT_BLOCK)
    per_group = o // grid.groups
    rc = te.reduce_axis((0, c), name="rc")
    mt = te.compute((image_blocks, row_blocks, grid.groups, alpha2, per_group, grid.block_tiles),
                    lambda nb, rb, g, ev, oc, t: te.sum(
                        u[ev, g * per_group + oc, rc] * v[nb, rb, ev, rc, t], axis=rc),
                    name=PRODUCT_BLOCK)

    def tile_at(n, oc, row, i, j, col):
        nb, rb, t = _tile_index(grid, n, row, col)
        g, ocl = oc // per_group, oc % per_group
        columns = [_combine(algo.output_t, j,
                            [mt[nb, rb, g, e * alpha + vv, ocl, t] for vv in range(alpha)])
                   for e in range(alpha)]
        return _combine(algo.output_t, i, columns)

    tiles = te.compute((n_, o, grid.rows, m, m, grid.slots), tile_at, name=TILE_ROWS)
    return te.compute(tuple(int(d) for d in out_shape),
                      lambda n, oc, y, x_: tiles[n, oc, y // m, y % m, x_ % m, x_ // m],
                      name=OUTPUT_BLOCK)


def _phased_input(x: te.Tensor, pads: list[int], m: int, grid: Grid) -> te.Tensor:
    """x padded, each row dealt into m phases: phase k of row r holds columns k, m + k,
    2m + k, ... So the value at column m * col + j of a tile's window is phase j % m at
    position col + j // m, and the input transform's loads run along contiguous memory from
    tile to tile (read from the plain padded rows, they were m apart and LLVM left the F(4x4)
    transform scalar: 0.67 ms for ResNet's first stage at batch 1). One more position per
    phase and two more rows for the windows' overlap."""
    n_, c, h, w = (int(d) for d in x.shape)
    top, left = pads[0], pads[1]

    def phased(n, ch, r, k, q):
        y, col = r - top, m * q + k - left
        inside = tirx.all(y >= 0, y < h, col >= 0, col < w)
        return tirx.if_then_else(inside, x[n, ch, y, col], tirx.const(0, x.dtype))

    return te.compute((n_, c, m * grid.rows + 2, m, grid.slots + 1), phased, name=PAD_BLOCK)


def _block_tile(grid: Grid):
    """(image, tile row, tile column) of tile t of block (nb, rb). Written without the
    divisions that cannot matter, so TIR's regions stay exact."""
    def locate(nb, rb, t):
        col = t % grid.slots
        if grid.images == 1:
            return nb, rb * grid.block_rows + t // grid.slots, col
        per_image = grid.rows * grid.slots
        return nb * grid.images + t // per_image, t // grid.slots % grid.rows, col
    return locate


def _tile_index(grid: Grid, n, row, col):
    """(nb, rb, t): the block of tile (n, row, col) and its place in the block."""
    if grid.images == 1:
        return n, row // grid.block_rows, row % grid.block_rows * grid.slots + col
    return n // grid.images, 0, (n % grid.images * grid.rows + row) * grid.slots + col


# ---- CPU schedule ----------------------------------------------------------------------------

def role(name: str) -> str:
    """Which Winograd block a block is, from its name ("" for none)."""
    base = name.rstrip("0123456789")
    return base if base in KEEP_BLOCKS else ""


def is_winograd_conv(sch: s_tir.Schedule) -> bool:
    """Whether the function is a Winograd conv (fused_conv, with any epilogue)."""
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    return PRODUCT_BLOCK in names and any(role(nm) == OUTPUT_BLOCK for nm in names)


def schedule_fused(sch: s_tir.Schedule, lanes: int, tile_rows: int) -> set[str]:
    """One parallel loop over the tasks (block of tiles x output-channel group); per task the
    phased input rows its block reads, V of the block, M = U @ V for the group's channels (a
    register tile of `tile_rows` channels by one or two vectors of tiles), the output
    transform of the block's tiles, and then their output rows with the conv's epilogue
    (bias, activation, residual add). Returns the names of the blocks placed.

    The task loop is the tile transform's: placed from the output, the loops would cover
    only the tiles the output reads, and the product's tile loop would lose its whole
    vectors."""
    out = sch.get_sblock(OUTPUT_BLOCK)
    tiles_block, = sch.get_producers(out)
    product, = sch.get_producers(tiles_block)
    v_block, = sch.get_producers(product)
    pad, = sch.get_producers(v_block)
    image_blocks, row_blocks, groups = (
        int(d) for d in sch.get(product).writes[0].source.shape[:3])
    n_, _, rows, m, _, slots = (int(d) for d in sch.get(tiles_block).writes[0].source.shape)
    while consumers := sch.get_consumers(out):
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            break  # a concat stays a block of its own
    n, oc, row, i, j, col = sch.get_loops(tiles_block)
    nb, ni = sch.split(n, [image_blocks, n_ // image_blocks])
    rb, rr = sch.split(row, [row_blocks, rows // row_blocks])
    g, ocl = sch.split(oc, [groups, None])
    heavy = weight_heavy(tuple(int(d) for d in sch.get(out).writes[0].source.shape), m)
    outer = [g, nb, rb] if heavy else [nb, rb, g]
    sch.reorder(*outer, ni, ocl, rr, col, i, j)
    sch.unroll(i)
    sch.unroll(j)
    # one block of all tiles split by output channels: V is computed once, by all threads,
    # and read by all (per task, a 512-channel conv at batch 8 took 8.4 ms against 6.2)
    shared = image_blocks * row_blocks == 1 and groups > 1
    # unit loops kept: with one input channel the channel loops are unit loops too
    for block in ((product,) if shared else (product, v_block, pad)):
        sch.compute_at(block, outer[-1], preserve_unit_loops=True)
    sch.reverse_compute_at(out, outer[-1], preserve_unit_loops=False)
    sch.parallel(sch.fuse(*outer))
    placed = _schedule_block_product(sch, product, lanes, tile_rows)
    sch.unroll(sch.split(sch.get_loops(out)[-1], [None, m])[1])
    ev, ch, t = sch.get_loops(v_block)[-3:]
    e, v = sch.split(ev, [None, m + 2])
    sch.reorder(ch, *sch.split(t, [None, slots]), e, v)
    sch.unroll(e)
    sch.unroll(v)
    sch.unroll(sch.get_loops(pad)[-2])
    if shared:
        sch.parallel(ch)
        sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))
    return placed | {sch.get(b).name_hint for b in (out, tiles_block, v_block, pad)}


def _schedule_block_product(sch: s_tir.Schedule, product, lanes: int, tile_rows: int):
    """M = U @ V of one task as register tiles of `tile_rows` output channels by one or two
    vectors of tiles, accumulated in registers over the input channels."""
    ev, oc, t, rc = sch.get_loops(product)[-4:]
    width = 2 * lanes if _extent(sch, t) % (2 * lanes) == 0 else lanes
    oco, oci = sch.split(oc, [None, tile_rows])
    to, ti = sch.split(t, [None, width])
    sch.reorder(ev, oco, to, rc, oci, ti)
    acc = local_accumulator(sch, product)
    sch.reverse_compute_at(acc, to)
    sch.vectorize(ti)
    sch.unroll(oci)
    sch.vectorize(sch.get_loops(acc)[-1])
    init = vectorized_init(sch, product, rc)
    return {sch.get(b).name_hint for b in (product, acc, init)}
