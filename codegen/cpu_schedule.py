"""Schedule rules for CPUs, applied to every fused TIR function before the build.

TVM's default CPU pipeline leaves kernels unscheduled (one scalar thread, no tiling). These rules
give every block a sensible schedule in milliseconds of compile time:
- contraction blocks (matmul, batched matmul, conv: spatial loops plus reduction loops whose
  innermost spatial loop walks contiguous memory) get a register tile of `rows` x `2*lanes`
  outputs accumulated in a local buffer, vectorized along the contiguous axis, with the
  reduction inside and the tiles spread over the cores;
- other reductions (softmax, norms) run their spatial loops in parallel;
- elementwise and layout blocks are flattened, vectorized and parallelized.
Every rule uses TIR schedule primitives, which preserve semantics; a block a rule cannot handle
keeps TVM's default loops, and the count of such fallbacks is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import s_tir, tirx

from .attention import SCHEDULES, honer_kernel
from .gemv import find_gemv, schedule_gemv
from .int8_dot import intrinsic_for, schedule_int8_matmul
from .relax_lower import DECODED_WEIGHT
from .tiles import local_accumulator, vectorized_init
from .winograd import INPUT_BLOCK, OUTPUT_BLOCK, is_winograd_conv, schedule_fused
from .winograd import role as winograd_role

DATA_PAR, COMM_REDUCE = 0, 2
OPAQUE = 8  # relax op_pattern of kernels written by hand in TIR
PARALLEL_MIN_WORK = 4096  # below this many elements a parallel launch costs more than it saves


@dataclass(frozen=True)
class CPUScheduleConfig:
    lanes: int = 8  # float32 lanes of the vector unit (AVX2: 8, AVX-512: 16, NEON: 4)
    rows: int = 4  # register tile height of contraction kernels
    # vector registers (AVX-512 and NEON: 32, AVX2: 16): with 32, convs whose output width
    # allows take tiles of twice `rows` (16 accumulators)
    vector_registers: int = 16
    # exp / erf / tanh (softmax, GELU) as TVM's polynomial forms, which vectorize, instead of
    # scalar libm calls; relative error at most 4e-6 (exp) and 3e-7 (erf, tanh) in float32
    fast_math: bool = True
    # the CPU's int8 dot-product instruction for W8A8 matmuls ("vnni", "avx512", "avx2", see
    # int8_dot), "" for none: those matmuls then take the generic contraction rule
    int8_dot: str = ""


@dataclass
class ScheduleStats:
    contractions: int = 0
    decoding: int = 0  # of which quantized products of a few rows (codegen/gemv.py)
    winograd: int = 0  # of which Winograd conv kernels (codegen/winograd.py; identical convs
    # share one kernel)
    reductions: int = 0
    elementwise: int = 0
    attention: int = 0  # one-kernel attentions (codegen/attention.py)
    tuned: int = 0  # kernels that took a tuned schedule from the database
    serial: list[str] = field(default_factory=list)  # blocks with a loop-carried dependence
    fallbacks: list[str] = field(default_factory=list)  # functions left with default loops


def schedule_module(mod: tvm.IRModule, cfg: CPUScheduleConfig,
                    stats: ScheduleStats | None = None,
                    tuned: Callable[[tirx.PrimFunc], tirx.PrimFunc | None] | None = None,
                    ) -> tvm.IRModule:
    """Schedules every kernel: `tuned(func)` first where given (a tuned schedule measured
    faster than the rules), honer's rules otherwise."""
    stats = stats if stats is not None else ScheduleStats()
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        found = tuned(func) if tuned is not None and is_tunable(func) else None
        if found is not None:
            stats.tuned += 1
        updates[gv] = found if found is not None else _schedule_func(gv.name_hint, func, cfg,
                                                                     stats)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def is_opaque(func: tirx.PrimFunc) -> bool:
    """TVM's hand-written kernels (cumsum, sort) that come with their own loops."""
    return "op_pattern" in (func.attrs or {}) and int(func.attrs["op_pattern"]) == OPAQUE


def is_tunable(func: tirx.PrimFunc) -> bool:
    """Whether MetaSchedule may tune the kernel: not TVM's hand-written ones, nor honer's
    Winograd convs, whose one-kernel form (each task keeping its tiles' intermediates) the
    generic rules cannot express; one tuning round of ResNet-18's 64-channel conv ran past
    ten minutes."""
    return not is_opaque(func) and not is_winograd_conv(s_tir.Schedule(func))


def _schedule_func(name: str, func: tirx.PrimFunc, cfg: CPUScheduleConfig,
                   stats: ScheduleStats) -> tirx.PrimFunc:
    if honer_kernel(func):
        return _schedule_honer_kernel(name, func, cfg, stats)
    if is_opaque(func):
        return func
    sch = s_tir.Schedule(func)
    try:
        _inline_elementwise_chains(sch)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            _pad_contraction(sch, block, cfg)
        # blocks placed by a special rule or by the contraction rule (with their epilogues)
        done = schedule_fused(sch, cfg.lanes, cfg.rows) if is_winograd_conv(sch) else set()
        winograd_convs = sum(winograd_role(name) == INPUT_BLOCK for name in done)
        stats.winograd += winograd_convs
        stats.contractions += winograd_convs
        stats.elementwise += sum(winograd_role(name) == OUTPUT_BLOCK for name in done)
        if not done and _next_contraction(sch, set()) is None \
                and _schedule_row_group(sch, cfg, stats):
            return sch.mod["main"]
        if (gemv := find_gemv(sch)) is not None:
            done |= schedule_gemv(sch, gemv)
            stats.contractions += 1
            stats.decoding += 1
        while (found := _next_contraction(sch, done)) is not None:
            intrinsic = intrinsic_for(sch.get(found[0]).name_hint, cfg.int8_dot)
            placed = intrinsic and schedule_int8_matmul(sch, found[0], *intrinsic)
            done |= placed or _schedule_contraction(sch, *found, cfg)
            stats.contractions += 1
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if sch.get(block).name_hint not in done:
                _schedule_block(sch, block, cfg, stats)
        return sch.mod["main"]
    except Exception as e:  # noqa: BLE001 - a rule that does not fit: try the safe rules only
        stats.fallbacks.append(f"{name}: {type(e).__name__}")
        return _schedule_func_conservative(name, func, cfg, stats)


def _schedule_honer_kernel(name: str, func: tirx.PrimFunc, cfg: CPUScheduleConfig,
                           stats: ScheduleStats) -> tirx.PrimFunc:
    """A kernel honer wrote (codegen/attention.py), with the schedule written for it."""
    sch = s_tir.Schedule(func)
    kernel = honer_kernel(func)
    try:
        SCHEDULES[kernel](sch, cfg.lanes)
    except Exception as e:  # noqa: BLE001 - correct with TVM's default loops, only slow
        stats.fallbacks.append(f"{name}: {type(e).__name__}")
        return func
    if kernel == "attention":
        stats.attention += 1
    else:
        stats.elementwise += 1
    return sch.mod["main"]


def _inline_elementwise_chains(sch: s_tir.Schedule) -> None:
    """Inlines each elementwise block into its one elementwise consumer: a GELU spelled out is
    five blocks (scale, erf, half, add, product), and as blocks they ran as five passes over
    memory after the matmul instead of on its register tile. Last block first: a block read
    by two steps of a chain (GELU reads its input twice) has one consumer only once the chain
    is one block, and a reshape in front of a GELU ran as a copy pass of its own (a
    MiniLM-sized W8A8 GELU kernel: 0.128 -> 0.108 ms). A block feeding a reduction is left
    alone (a conv's pad, softmax's exponentials are read many times each), and so are the
    Winograd transforms and their padded input (codegen/winograd.py schedules those)."""
    for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))):
        kinds = _iter_kinds(sch, block)
        consumers = sch.get_consumers(block)
        if kinds is None or COMM_REDUCE in kinds or len(consumers) != 1 \
                or winograd_role(sch.get(block).name_hint) \
                or winograd_role(sch.get(consumers[0]).name_hint):
            continue
        consumer_kinds = _iter_kinds(sch, consumers[0])
        if consumer_kinds is None or COMM_REDUCE in consumer_kinds:
            continue
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass


def _schedule_row_group(sch: s_tir.Schedule, cfg: CPUScheduleConfig,
                        stats: ScheduleStats) -> bool:
    """Softmax, layer norm and their kin: row reductions and elementwise blocks over the same
    rows. One parallel loop over the rows computes each row whole (max, exponentials, sum,
    normalized output) while it is in L1, instead of one pass over memory per block. True
    when the function had that shape and was scheduled so."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    last = blocks[-1]
    kinds = _iter_kinds(sch, last)
    if len(blocks) < 2 or kinds is None or COMM_REDUCE in kinds or len(kinds) < 2:
        return False
    loops = sch.get_loops(last)
    rows = [_extent(sch, lp) for lp in loops[:-1]]
    for block in blocks[:-1]:
        block_kinds = _iter_kinds(sch, block)
        block_loops = sch.get_loops(block)
        if block_kinds is None or block_kinds[:len(rows)] != [DATA_PAR] * len(rows) \
                or [_extent(sch, lp) for lp in block_loops[:len(rows)]] != rows:
            return False
    reducing = [b for b in blocks if COMM_REDUCE in _iter_kinds(sch, b)]
    partials = [p for p in (_vector_partials(sch, b, cfg.lanes) for b in reducing) if p]
    blocks = sch.get_child_blocks(sch.get_sblock("root"))  # with the partials' blocks
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=False)
    for block in partials:  # placed as (lane, step): steps outside, lanes one vector
        lane, step = sch.get_loops(block)[-2:]
        sch.reorder(step, lane)
        sch.vectorize(lane)
    if _volume(sch, sch.get_loops(last)) >= PARALLEL_MIN_WORK:
        sch.parallel(row)
    stats.reductions += len(reducing)
    stats.elementwise += 1
    return True


def _vector_partials(sch: s_tir.Schedule, block, lanes: int):
    """A row reduction as `lanes` partial results per row, one per vector lane, then one sum or
    max of those: each step of the loop is one vector operation instead of `lanes` scalar
    ones each waiting for the last (W8A8 attention's row max over 208 scores was a chain of
    208 dependent maxima per row). Returns the partials' block, to be vectorized once it is
    placed in the row loop, or None where the row is not whole vectors (or TIR cannot split
    the reduction: a reduction of several values at once)."""
    loop = sch.get_loops(block)[-1]
    if _extent(sch, loop) % lanes or _extent(sch, loop) < 2 * lanes:
        return None
    spatial = sum(1 for k in _iter_kinds(sch, block) if k == DATA_PAR)
    try:
        _, lane = sch.split(loop, [None, lanes])
        return sch.rfactor(lane, factor_axis=spatial)  # lanes last: contiguous per row
    except s_tir.ScheduleError:
        return None


def _next_contraction(sch: s_tir.Schedule, done: set[str]):
    """The first contraction block not yet scheduled (the list is re-read each time because
    inlining epilogues removes blocks)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint in done:
            continue
        kinds = _iter_kinds(sch, block)
        if kinds and COMM_REDUCE in kinds and _is_contraction(sch, block, kinds):
            return block, kinds
    return None


def _schedule_func_conservative(name: str, func: tirx.PrimFunc, cfg: CPUScheduleConfig,
                                stats: ScheduleStats) -> tirx.PrimFunc:
    """Second attempt after a failure: only the elementwise and reduction rules."""
    sch = s_tir.Schedule(func)
    try:
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            _schedule_block(sch, block, cfg, stats)
        return sch.mod["main"]
    except Exception:  # noqa: BLE001
        return func


def _iter_kinds(sch: s_tir.Schedule, block) -> list[int] | None:
    """Iterator kinds of a block whose loops map one to one onto its iterators, else None."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if len(loops) != len(stmt.iter_vars) or any(
            it.iter_type not in (DATA_PAR, COMM_REDUCE) for it in stmt.iter_vars):
        return None
    if any(not isinstance(sch.get(loop).extent, tirx.IntImm) for loop in loops):
        return None
    return [int(it.iter_type) for it in stmt.iter_vars]


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _volume(sch: s_tir.Schedule, loops) -> int:
    """Iterations of a loop nest: the work a parallel launch would split."""
    return int(np.prod([_extent(sch, lp) for lp in loops], dtype=np.int64))


def _schedule_block(sch: s_tir.Schedule, block, cfg: CPUScheduleConfig,
                    stats: ScheduleStats) -> None:
    kinds = _iter_kinds(sch, block)
    if kinds is None:
        return
    try:
        if COMM_REDUCE in kinds:
            _schedule_reduction(sch, block, kinds, stats)
        else:
            _schedule_elementwise(sch, block, cfg, stats)
    except s_tir.ScheduleError:
        # a scan (cumsum) carries a dependence along its loops: TIR refuses to parallelize
        # or vectorize it, and its loops stay serial
        stats.serial.append(sch.get(block).name_hint)


def _is_contraction(sch: s_tir.Schedule, block, kinds: list[int]) -> bool:
    """Spatial loops first, reductions last, at least two spatial loops, two inputs multiplied
    (matmul, conv), and a spatial iterator that walks some operand contiguously."""
    first_reduce = kinds.index(COMM_REDUCE)
    if first_reduce < 2 or any(k != COMM_REDUCE for k in kinds[first_reduce:]):
        return False
    stmt = sch.get(block)
    if len(stmt.reads) < 2 or len(stmt.writes) != 1:
        return False
    # two operands that both run along the reduction: a layer norm's variance, sum over k of
    # (x[r, k] - mean[r])^2, has two inputs too, but mean is a per-row constant, and tiled as
    # a product it was vectorized across rows (a gather per lane)
    reduced = [it.var for it in stmt.iter_vars[first_reduce:]]
    if sum(1 for region in stmt.reads if _uses_any(region, reduced)) < 2:
        return False
    return _vector_axis(stmt, first_reduce) is not None


def _uses_any(region, variables) -> bool:
    """Whether the indices of a buffer region mention any of `variables`."""
    used = [u for r in region.region for u in tirx.analysis.undefined_vars(r.min)]
    return any(u.same_as(v) for u in used for v in variables)


def _vector_axis(stmt, first_reduce: int) -> int | None:
    """The spatial iterator to vectorize: the one indexing the last (contiguous) axis of an
    input (a matmul's output columns, a conv's output channels with an HWIO kernel), else the
    one indexing the output's last axis."""
    spatial = [it.var for it in stmt.iter_vars[:first_reduce]]
    for region in list(stmt.reads) + list(stmt.writes):
        last = _lane_var(region.region[-1].min)
        for pos, var in enumerate(spatial):
            if last is not None and last.same_as(var):
                return pos
    return None


def _lane_var(index):
    """The iterator an operand's last axis walks: `v` for index v, and for v % P too (the
    lane within a panel of P output channels, see the "convpanels" weight layout)."""
    if isinstance(index, tirx.FloorMod) and isinstance(index.b, tirx.IntImm):
        index = index.a
    return index if isinstance(index, tirx.Var) else None


def _dividing_rows(extent: int, rows: int) -> int:
    """The most rows, up to twice `rows` and at least `rows`, that divide `extent`; 0 if none."""
    return next((d for d in range(2 * rows, rows - 1, -1) if extent % d == 0), 0)


def _tile_width(extent: int, lanes: int) -> int:
    """Columns of the register tile: two vectors when they divide the row, else one."""
    for width in (2 * lanes, lanes):
        if extent % width == 0:
            return width
    return lanes if extent > lanes else extent


def _pad_contraction(sch: s_tir.Schedule, block, cfg: CPUScheduleConfig) -> None:
    """Pads a matmul whose row length no vector width divides (197 tokens) to a multiple of two
    vectors: a predicated vector loop compiles to scalar code, a copy is far cheaper."""
    kinds = _iter_kinds(sch, block)
    if kinds is None or COMM_REDUCE not in kinds or not _is_contraction(sch, block, kinds):
        return
    first_reduce = kinds.index(COMM_REDUCE)
    ext_j = _extent(sch, sch.get_loops(block)[first_reduce - 1])
    if ext_j % cfg.lanes == 0 or ext_j < 2 * cfg.lanes:
        return
    factors = [1] * len(kinds)
    factors[first_reduce - 1] = 2 * cfg.lanes
    try:
        sch.pad_einsum(block, factors)
    except Exception:  # noqa: BLE001 - not an einsum (a conv): keep the predicated tile
        pass


def _row_axis(sch: s_tir.Schedule, block, spatial: list, jpos: int,
              cfg: CPUScheduleConfig):
    """The matmul's row loop: the one just outside the columns, unless it is too short to fill
    a register tile (a [tokens, 1, features] matmul from a sequence-first attention), then the
    longest other spatial loop. A loop that indexes the vectorized operand (the panel of a
    weight stored in panels, [out / P, in, P]) is no row: its tile would reuse nothing."""
    if jpos != len(spatial) - 1 or len(spatial) < 2:
        return spatial[-2]
    panel_axes = _vector_operand_axes(sch.get(block), len(spatial))
    candidates = [lp for k, lp in enumerate(spatial[:-1]) if k not in panel_axes] \
        or spatial[:-1]
    i = candidates[-1]
    if _extent(sch, i) >= cfg.rows:
        return i
    return max(candidates, key=lambda lp: _extent(sch, lp))


def _vector_operand_axes(stmt, spatial_count: int) -> set[int]:
    """Positions of the spatial iterators that index the input read along the vectorized
    (last) iterator, besides that one."""
    spatial = [it.var for it in stmt.iter_vars[:spatial_count]]
    last = spatial[-1]
    for region in stmt.reads:
        index = region.region[-1].min
        if isinstance(index, tirx.Var) and index.same_as(last):
            used = {k for k, var in enumerate(spatial[:-1])
                    for r in region.region if isinstance(r.min, tirx.Var) and r.min.same_as(var)}
            return used
    return set()


def _schedule_contraction(sch: s_tir.Schedule, block, kinds: list[int],
                          cfg: CPUScheduleConfig) -> set[str]:
    loops = sch.get_loops(block)
    first_reduce = kinds.index(COMM_REDUCE)
    spatial, reduce = loops[:first_reduce], loops[first_reduce:]
    jpos = _vector_axis(sch.get(block), first_reduce)
    j = spatial[jpos]
    # rows of the register tile: for a conv (several reduction loops) the output width when
    # vectorizing output channels, the output channels when vectorizing the width; for a
    # matmul the output rows
    conv = len(reduce) > 1
    if conv:
        i = spatial[-1] if jpos != len(spatial) - 1 else spatial[1]
    else:
        i = _row_axis(sch, block, spatial, jpos, cfg)
    outer = [lp for lp in spatial if not (lp.same_as(i) or lp.same_as(j))]
    ext_i, ext_j = _extent(sch, i), _extent(sch, j)
    nj = _tile_width(ext_j, cfg.lanes)
    mi = min(cfg.rows, ext_i)
    if conv and cfg.vector_registers >= 32 and ext_i % (2 * cfg.rows) == 0:
        # 8 x 2 vectors: ResNet-18's 7 x 7 stem conv 1.37 -> 1.25 ms (kernel alone, in
        # turns), its other direct convs the same within noise
        mi = 2 * cfg.rows
    elif conv and ext_i % mi and (rows := _dividing_rows(ext_i, cfg.rows)):
        # an output width of 7 or 14 leaves a part-empty tile in every row of 4: a tile of 7
        # rows by one vector holds as many registers and fills them (3.6 -> 3.45 ms for
        # ResNet's 512-channel conv, 3.43 -> 3.15 ms for the 256-channel one)
        mi, nj = rows, cfg.lanes
    io, ii = sch.split(i, [None, mi])
    jo, ji = sch.split(j, [None, nj])
    if conv and _activation_heavy(sch.get(block), jpos):
        # output rows outermost where the output outweighs the kernel: a thread then writes
        # the rows that the next layer's task on it reads (Winograd convs and pools split by
        # rows too); split by channel panels, half of each activation crossed between the
        # cores (ResNet-18 at batch 1 with the vCPUs far apart: 17.9 -> 16.9 ms, near
        # 15.2 -> 15.0, with the rows-first pools below)
        sch.reorder(*outer, jo, io, *reduce, ii, ji)
        tasks = [*outer, jo, io]
    elif conv:
        # output-channel panels outermost: a task's panel of the kernel (C x kh x kw x P)
        # stays in L2 while the output rows pass by (with the rows outside, the 9 MiB kernel
        # of a 512-channel conv was streamed again for every row tile)
        sch.reorder(jo, *outer, io, *reduce, ii, ji)
        tasks = [jo, *outer, io]
    else:
        # matmul: column panels outside row tiles, so one panel of the right operand stays
        # in L1 while every row tile streams past it
        sch.reorder(*outer, jo, io, *reduce, ii, ji)
        tasks = [*outer, jo]
    acc = local_accumulator(sch, block)
    if jpos != len(spatial) - 1:
        # the accumulator keeps the output's layout: move the vectorized axis last so the tile
        # is whole vectors, not strided lanes
        rank = len(spatial)
        sch.transform_layout(block, ("write", 0), tirx.IndexMap.from_func(
            lambda *idx: [idx[k] for k in range(rank) if k != jpos] + [idx[jpos]],
            ndim=rank))
    sch.reverse_compute_at(acc, io)
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.vectorize(sch.get_loops(acc)[-1])
    task = sch.fuse(*tasks)
    sch.parallel(task)
    decoded = _decode_per_task(sch, block, task)
    init = vectorized_init(sch, block, reduce[0])
    return {sch.get(b).name_hint for b in (block, init, acc, *decoded)}


def _activation_heavy(stmt, jpos: int) -> bool:
    """Whether a conv writes more output than it reads kernel (the operand read along the
    vectorized output channels)."""
    lane = stmt.iter_vars[jpos].var
    out = int(np.prod([int(d) for d in stmt.writes[0].source.shape]))
    for region in stmt.reads:
        var = _lane_var(region.region[-1].min)
        if var is not None and var.same_as(lane):
            return out > int(np.prod([int(d) for d in region.source.shape]))
    return False


def _decode_per_task(sch: s_tir.Schedule, block, task) -> list:
    """A weight decoded from its compressed form (relax_lower's DECODED_WEIGHT) is decoded
    inside each task, only the panel that task's tiles read (in L1 while they run), rather
    than the whole weight into memory first."""
    decoded = [p for p in sch.get_producers(block) if sch.get(p).name_hint == DECODED_WEIGHT]
    for producer in decoded:
        sch.compute_at(producer, task, preserve_unit_loops=False)
        sch.vectorize(sch.get_loops(producer)[-1])
    return decoded


def _schedule_reduction(sch: s_tir.Schedule, block, kinds: list[int],
                        stats: ScheduleStats) -> None:
    loops = sch.get_loops(block)
    spatial = [lp for lp, k in zip(loops, kinds) if k == DATA_PAR]
    if not spatial or kinds[:len(spatial)] != [DATA_PAR] * len(spatial):
        return
    if _is_window(sch, block, len(spatial)):
        _schedule_window(sch, block, spatial)
        stats.reductions += 1
        return
    work = _volume(sch, loops)  # before the fuse, which replaces the loops
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if work >= PARALLEL_MIN_WORK and _extent(sch, fused) > 1:
        sch.parallel(fused)
    stats.reductions += 1


def _is_window(sch: s_tir.Schedule, block, spatial_count: int) -> bool:
    """A pooling window: the output's last axis walks the input's last axis too (at a
    stride), the reduction only shifts it. A row sum reads along the reduction instead."""
    stmt = sch.get(block)
    last = stmt.iter_vars[spatial_count - 1].var
    if spatial_count < 2 or _extent(sch, sch.get_loops(block)[spatial_count - 1]) < 8:
        return False
    return any(any(u.same_as(last) for u in tirx.analysis.undefined_vars(r.region[-1].min))
               for r in stmt.reads if not r.source.same_as(stmt.writes[0].source))


def _schedule_window(sch: s_tir.Schedule, block, spatial: list) -> None:
    """Rows of outputs in parallel, each row a plain loop with the window innermost. Fused into
    one parallel loop of single outputs, ResNet-18's 3x3 max pool took 0.57 ms, each output's
    indices divided out of the fused counter; so 0.13 ms (kernel alone, in turns). Moving the
    window's offsets outside the row (to vectorize along it at a stride of 2) gave 0.22 ms,
    and reading the input through the padding's bounds test instead of a padded copy 0.39:
    that test is a branch per read."""
    work = _volume(sch, sch.get_loops(block))
    spatial = _rows_first(sch, spatial)
    rows = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(rows)


def _schedule_elementwise(sch: s_tir.Schedule, block, cfg: CPUScheduleConfig,
                          stats: ScheduleStats) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    if len(loops) > 1 and _extent(sch, loops[-1]) % cfg.lanes:
        _schedule_rows(sch, loops)
        stats.elementwise += 1
        return
    # TVM cannot vectorize stores of bool (it widens them to int8 vectors and then rejects them)
    vectorizable = all(str(w.source.dtype) != "bool" for w in sch.get(block).writes)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = _extent(sch, fused)
    if total >= 4 * cfg.lanes and vectorizable:
        outer, inner = sch.split(fused, [None, cfg.lanes])
        sch.vectorize(inner)
    else:
        outer = fused
    if total >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    stats.elementwise += 1


def _schedule_rows(sch: s_tir.Schedule, loops: list) -> None:
    """An elementwise block whose rows are not whole vectors (a pad to 114 x 114, softmax's
    197 columns). Flattened, a vector would straddle rows and each lane's index would be
    computed apart with divisions (a max pool's pad ran 25x slower so); split by the vector
    width, the tail's predicate makes TVM emit the whole loop scalar (softmax's exp 2.4x
    slower). Rows in parallel, each row a plain loop that LLVM vectorizes with its own tail."""
    work = _volume(sch, loops)
    loops = _rows_first(sch, loops)
    rows = sch.fuse(*loops[:-1])
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(rows)


def _rows_first(sch: s_tir.Schedule, loops: list) -> list:
    """NCHW loops [n, c, h, w] reordered [n, h, c, w]: split in parallel, each thread then
    takes rows of every channel, as the convs and pools around the block split theirs."""
    if len(loops) != 4:
        return loops
    n, c, h, w = loops
    sch.reorder(n, h, c)
    return [n, h, c, w]
