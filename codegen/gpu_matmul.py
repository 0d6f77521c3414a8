"""fp16 tensor-core matmuls with the block tile sized to the problem.

dlight's tensor-core rule gives every matmul the same 128x128 block tile (16 warps). A
transformer's projections at small batch are narrow: BERT-MiniLM's 128 or 1024 tokens by 384
outputs make 3 or 24 blocks, so on a 132-SM GPU most of the chip idles. This rule is the same
kind of schedule (wmma fragments of 16x16x16, operands staged through shared memory with a
two-stage software pipeline, fp32 accumulation, epilogue fused into the store), but picks the
largest tile that still gives every SM a block, down to 32x32 (4 warps of one fragment each);
where 128x128 is that tile, it leaves the kernel to dlight's rule.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import s_tir, tirx

from .tvmscript import shallow_stack

FRAGMENT = 16  # wmma m16n16k16
WARP = 32
VECTOR = 4  # halves per thread in a shared-memory copy
# a block per SM on the largest built-for GPU (H100/H200: 132 SMs; A100: 108)
MIN_BLOCKS = 132
STAGES = 2  # software pipeline: operand tiles are double-buffered
PAD = 8  # halves added to each operand row in shared memory (no bank conflicts)
OUT_PAD = 4  # floats added to each output row
DEFAULT_SHARED = 48 * 1024  # per block without opting in (TVM opts in for dynamic above it)


@dataclass(frozen=True)
class MmaTile:
    """A block's share of the output: warps_i x warps_j warps, each frags_i x frags_j
    fragments; k_frags fragments of the reduction per shared-memory stage."""

    warps_i: int
    frags_i: int
    warps_j: int
    frags_j: int
    k_frags: int = 4

    @property
    def rows(self) -> int:
        return self.warps_i * self.frags_i * FRAGMENT

    @property
    def cols(self) -> int:
        return self.warps_j * self.frags_j * FRAGMENT

    @property
    def warps(self) -> int:
        return self.warps_i * self.warps_j

    @property
    def out_scope(self) -> str:
        """Where the output tile is staged before the fused epilogue. TVM 0.27 merges all
        dynamic shared buffers into one allocation typed by its largest member, and then
        refuses fp32 fragment stores into it when fp16 operand tiles are the larger part:
        below 128x128 the output goes to static shared memory (32 KiB at most, in limits)."""
        return "shared.dyn" if self.rows * self.cols >= 128 * 128 else "shared"

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.cols}"

    def shared_bytes(self) -> tuple[int, int]:
        """(dynamic, static) shared memory of a block: the staged operand tiles, and the
        output tile where it is staged apart (out_scope)."""
        operands = STAGES * (self.rows + self.cols) * (FRAGMENT * self.k_frags + PAD) * 2
        out = self.rows * (self.cols + OUT_PAD) * 4
        return (operands + out, 0) if self.out_scope == "shared.dyn" else (operands, out)

    def launches(self) -> bool:
        """Without opting in, a block gets 48 KiB of shared memory, static and dynamic
        together; TVM opts in (up to the GPU's 164/227 KiB) only where the dynamic part alone
        reaches 48 KiB. A 64x64 tile (36 KiB dynamic + 17 KiB static) failed to launch on an
        H200 for that reason."""
        dynamic, static = self.shared_bytes()
        return dynamic >= DEFAULT_SHARED or dynamic + static <= DEFAULT_SHARED


DLIGHT_TILE = MmaTile(4, 2, 4, 2)  # dlight's own rule schedules this one
TILES = (DLIGHT_TILE, MmaTile(2, 2, 4, 2), MmaTile(2, 1, 2, 2), MmaTile(2, 1, 2, 1))
TILE_NAMES = ("auto", *(t.name for t in TILES))


def choose_tile(batch: int | None, rows: int | None, cols: int | None, wanted: str) -> MmaTile:
    """`wanted` names a tile, or "auto": the largest with at least MIN_BLOCKS blocks (the
    smallest when none has; the largest when a dimension is dynamic)."""
    if wanted != "auto":
        return next(t for t in TILES if t.name == wanted)
    if None in (batch, rows, cols):
        return TILES[0]
    for tile in TILES:
        if batch * math.ceil(rows / tile.rows) * math.ceil(cols / tile.cols) >= MIN_BLOCKS:
            return tile
    return TILES[-1]


class TensorCoreMatmul:
    """A dlight schedule rule (see `codegen/gpu.py`) for fp16 matmuls on sm_70 and newer whose
    spatial and reduction extents all exceed 64 (smaller ones stay on dlight's SIMT rule)."""

    def __init__(self, tile: str = "auto"):
        self.tile = tile

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> Any:
        from tvm.s_tir.dlight.analysis import get_root_block
        from tvm.s_tir.dlight.gpu.matmul import check_sm_version, get_reduction_blocks

        if (not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda"
                or check_sm_version(str(target.attrs.get("arch", ""))) < 70
                or "dlight.do_not_tensorize" in func.attrs.keys()):
            return None
        sch = s_tir.Schedule(func)
        reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
        if reductions is None or not _normalize(sch, reductions[0]):
            return None
        extents = _static_extents(sch.get(reductions[0]))
        if not _fp16_in(sch.get(reductions[0])) or any(e is not None and e <= 64
                                                       for e in extents[1:]):
            return None
        tensor_intrinsics()  # before dlight's rule imports them the slow way
        tile = choose_tile(*extents[:3], self.tile)
        if tile == DLIGHT_TILE:
            return None
        try:
            _schedule(sch, reductions[0], tile)
        except RuntimeError:  # TVM's ScheduleError: a shape the wmma loops cannot take
            return None
        return sch


@functools.cache
def tensor_intrinsics() -> Any:
    """TVM's CUDA tensor intrinsics (tvm.s_tir.tensor_intrin.cuda), imported once, with a
    shallow stack (see codegen/tvmscript: 12 s instead of 90)."""
    with shallow_stack():
        import tvm.s_tir.tensor_intrin.cuda as intrinsics
    return intrinsics


def _normalize(sch: s_tir.Schedule, block: Any) -> bool:
    """Rewrite the block as C[S, I, J] += A[S, I, K] * B[S, J, K] (dlight's index analysis)."""
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    maps = get_index_map(sch.get(block))
    if maps is None:
        return False
    matmul_map, a_map, b_map, c_map = maps
    a, b, c = (sch.reindex(block, ("read", 0)), sch.reindex(block, ("read", 1)),
               sch.reindex(block, ("write", 0)))
    sch.transform_layout(a, ("write", 0), a_map)
    sch.transform_layout(b, ("write", 0), b_map)
    sch.transform_layout(c, ("read", 0), c_map)
    sch.transform_block_layout(block, matmul_map)
    return True


def _static_extents(block: tirx.SBlock) -> list[int | None]:
    return [int(v.dom.extent) if isinstance(v.dom.extent, tirx.IntImm) else None
            for v in block.iter_vars]


def _fp16_in(block: tirx.SBlock) -> bool:
    from tvm.s_tir.dlight.gpu.matmul import get_in_out_dtypes

    dtype_in, dtype_out = get_in_out_dtypes(block)
    return dtype_in == "float16" and dtype_out in ("float16", "float32")


def _schedule(sch: s_tir.Schedule, block: Any, tile: MmaTile) -> None:
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers

    get_wmma_intrin_group = tensor_intrinsics().get_wmma_intrin_group

    sch.pad_einsum(block, [1, tile.rows, tile.cols, FRAGMENT * tile.k_frags])
    batch, i, j, k = sch.get_loops(block)
    i, i_frag = sch.split(i, [None, FRAGMENT])
    j, j_frag = sch.split(j, [None, FRAGMENT])
    k, k_frag = sch.split(k, [None, FRAGMENT])
    sch.reorder(i, j, k, i_frag, j_frag, k_frag)
    fragment_block = block
    tile_block = sch.blockize(i_frag)  # one iteration = one wmma m16n16k16

    i_block, i_warp, i_frags = sch.split(i, [None, tile.warps_i, tile.frags_i])
    j_block, j_warp, j_frags = sch.split(j, [None, tile.warps_j, tile.frags_j])
    k_stage, k_frags = sch.split(k, [None, tile.k_frags])
    sch.reorder(i_block, j_block, j_warp, i_warp, k_stage, k_frags, i_frags, j_frags)
    # two stages: the next slice of A and B is fetched into shared memory while this one
    # feeds the tensor cores, and fragments are loaded one step ahead of their mma
    sch.annotate(k_stage, "software_pipeline_stage", [0, 0, 0, 0, 0, 1, 1])
    sch.annotate(k_stage, "software_pipeline_order", [0, 3, 1, 4, 5, 2, 6])
    sch.annotate(k_frags, "software_pipeline_stage", [0, 0, 1])
    sch.annotate(k_frags, "software_pipeline_order", [0, 1, 2])
    sch.bind(batch, "blockIdx.z")
    sch.bind(sch.fuse(i_block, j_block), "blockIdx.x")
    warp = sch.fuse(j_warp, i_warp)
    sch.bind(warp, "threadIdx.y")

    def to_shared(index: int) -> Any:
        copy = sch.cache_read(tile_block, index, "shared.dyn")
        sch.compute_at(copy, k_stage)
        flat = sch.fuse(*sch.get_loops(copy)[-2:])
        _, ty, tx, vec = sch.split(flat, [None, tile.warps, WARP, VECTOR])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
        sch.storage_align(copy, 0, axis=-2, factor=16, offset=8)  # no bank conflicts
        sch.annotate(copy, "tirx.manifest_shared_memory_local_stage", 1)
        sch.annotate(copy, "double_buffer_scope", 0)
        auto_inline_producers(sch, copy)
        return copy

    to_shared(0)
    to_shared(1)
    a_frag = sch.cache_read(tile_block, 0, "wmma.matrix_a")
    b_frag = sch.cache_read(tile_block, 1, "wmma.matrix_b")
    sch.compute_at(a_frag, k_frags)
    sch.compute_at(b_frag, k_frags)
    out_shared = sch.cache_write(tile_block, 0, tile.out_scope)
    sch.storage_align(out_shared, 0, -2, 16, 4)
    out_frag = sch.cache_write(tile_block, 0, "wmma.accumulator")
    sch.reverse_compute_at(out_frag, warp)
    sch.reverse_compute_at(out_shared, warp)
    _fragment_loops(sch, out_frag, unroll=False)
    init = sch.get_child_blocks(sch.decompose_reduction(tile_block, k_stage))[0]

    def intrinsics(accumulate: str) -> dict[str, str]:
        return get_wmma_intrin_group(load_scope="shared.dyn", store_scope=tile.out_scope,
                                     in_dtype="float16", out_dtype=accumulate, trans_b=True)

    for frag, name in ((a_frag, "load_a"), (b_frag, "load_b")):
        sch.tensorize(_fragment_loops(sch, frag, unroll=True), intrinsics("float32")[name])
    # fp32 accumulation where the output buffer is fp32, else fp16 (a failed tensorize
    # leaves the schedule as it was, so the second try starts clean)
    for accumulate in ("float32", "float16"):
        intrin = intrinsics(accumulate)
        try:
            sch.tensorize(sch.get_loops(init)[-2], intrin["init"])
            sch.tensorize(sch.get_loops(out_frag)[-2], intrin["store"])
            sch.tensorize(sch.get_loops(fragment_block)[-3], intrin["compute"])
            break
        except RuntimeError:  # TVM's ScheduleError
            if accumulate == "float16":
                raise
    auto_inline_consumer_chain(sch, out_shared)
    flat = sch.fuse(*sch.get_loops(out_shared)[-2:])
    _, tx, vec = sch.split(flat, [None, WARP, VECTOR])
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)


def _fragment_loops(sch: s_tir.Schedule, block: Any, unroll: bool) -> Any:
    """Split a block's last two loops into 16x16 fragments; the first loop of a fragment."""
    i, j = sch.get_loops(block)[-2:]
    i_outer, i_inner = sch.split(i, [None, FRAGMENT])
    j_outer, j_inner = sch.split(j, [None, FRAGMENT])
    sch.reorder(i_outer, j_outer, i_inner, j_inner)
    if unroll:
        sch.unroll(i_outer)
        sch.unroll(j_outer)
    return i_inner
