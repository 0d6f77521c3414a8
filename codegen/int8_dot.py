"""The int8 dot-product instructions of CPUs as TIR tensor intrinsics, and the schedule rule that
puts W8A8 matmuls (`int8_matmul` blocks, see relax_lower) on them.

Each intrinsic computes C[0:L] += sum_{t<4} A[t] * B[0:L, t] for uint8 A (four consecutive
inputs, broadcast to every lane) and int8 B (L output channels x four inputs, one register),
accumulating in int32:
- `vnni`: AVX-512 VNNI, one vpdpbusd (16 lanes): exact for any int8 weights (its operands
  are byte vectors in the LLVM this TVM links, unlike TVM's own VNNI intrinsic, which passes
  int32 vectors and fails LLVM's verifier);
- `avx512` / `avx2`: vpmaddubsw (pairs of products summed in int16, saturating) then
  vpmaddwd by ones (pairs of pairs to int32), 16 / 8 lanes: exact only when no pair can exceed
  int16, which weights in [-63, 63] guarantee (2 * 255 * 63 < 32767; the W8A8 pass's
  `reduce_range`), so the kernel name says whether the weights fit (`int8_matmul_w7`).
The accumulator lives in a register tile ("local"), hence the local-scope C.
"""

from __future__ import annotations

import numpy as np

from .tiles import local_accumulator, vectorized_init
from .tvmscript import shallow_stack

# rows of the register tile, the first that divides the matmul's rows (int8_linear pads its
# input rows to a multiple of the first when none does)
ROW_TILES = (6, 4)
W7_KERNEL = "int8_matmul_w7"  # block name of an int8 matmul whose weights fit [-63, 63]
KERNEL = "int8_matmul"

# name -> (lanes, LLVM feature it needs, needs weights in [-63, 63])
INTRINSICS = {"vnni": (16, "avx512vnni", False), "avx512": (16, "avx512bw", True),
              "avx2": (8, "avx2", True)}


def padded_rows(rows: int) -> int:
    if any(rows % r == 0 for r in ROW_TILES):
        return rows
    return -(-rows // ROW_TILES[0]) * ROW_TILES[0]


def fits_int16_pairs(q: np.ndarray) -> bool:
    return bool(np.abs(q.astype(np.int16)).max(initial=0) <= 63)


def best_intrinsic(has_feature) -> str:
    """The fastest int8 dot product the CPU has (`has_feature(name)` asks LLVM), or ""."""
    for name, (_, feature, _) in INTRINSICS.items():
        if has_feature(feature):
            return name
    return ""


def _register(name: str) -> str:
    """Registers the intrinsic `name` once per process; returns its registered name."""
    from tvm.s_tir import TensorIntrin

    lanes = INTRINSICS[name][0]
    intrin_name = f"honer_{name}_dot_{lanes}x4"
    if TensorIntrin.get(intrin_name, allow_missing=True) is None:
        with shallow_stack():
            TensorIntrin.register(intrin_name, *_definitions(name, lanes))
    return intrin_name


def _definitions(name: str, lanes: int):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1),
             b: T.Buffer((lanes, 4), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    width = lanes * 4  # bytes in one register
    return desc, (_vnni if name == "vnni" else _maddubs)(lanes, width)


def _vnni(lanes: int, width: int):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def vnni(a: T.Buffer((4,), "uint8", offset_factor=1),
             b: T.Buffer((lanes, 4), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"),
                                          lanes), dtype="uint8x64"),
                b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    return vnni


def _maddubs(lanes: int, width: int):
    from tvm.script import tirx as T

    maddubs_name, maddwd_name = {
        16: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"),
        8: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")}[lanes]
    bytes_dtype, pairs_dtype, acc_dtype = f"int8x{width}", f"int16x{lanes * 2}", f"int32x{lanes}"
    ubytes_dtype = f"uint8x{width}"

    @T.prim_func(s_tir=True)
    def maddubs(a: T.Buffer((4,), "uint8", offset_factor=1),
                b: T.Buffer((lanes, 4), "int8", offset_factor=1),
                c: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            c[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(maddwd_name),
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(maddubs_name),
                    T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"),
                                                            dtype="int32"), lanes),
                                  dtype=ubytes_dtype),
                    b.vload([0, 0], dtype=bytes_dtype), dtype=pairs_dtype),
                T.broadcast(T.int16(1), lanes * 2), dtype=acc_dtype)

    return maddubs


def intrinsic_for(block_name: str, available: str) -> tuple[str, int] | None:
    """(registered intrinsic, lanes) for an int8 matmul block on this CPU, or None when the
    CPU has none or its instruction could saturate on this block's weights."""
    if not available or not block_name.startswith(KERNEL):
        return None
    lanes, _, needs_w7 = INTRINSICS[available]
    if needs_w7 and not block_name.startswith(W7_KERNEL):
        return None
    return _register(available), lanes


def _weight_in_dot_layout(stmt, lanes: int) -> bool:
    """The weight is stored [out / L, in / 4, L, 4] (relax_lower's int8dot<L>): the
    intrinsic loads its L x 4 bytes as one contiguous vector. A weight in another layout
    (outputs not whole vectors, then padded by the generic rule) would match the intrinsic's
    pattern with strided rows and load the wrong bytes."""
    shapes = [tuple(int(d) for d in r.source.shape) for r in stmt.reads]
    return any(len(s) >= 4 and s[-2:] == (lanes, 4) for s in shapes)


def schedule_int8_matmul(sch, block, intrinsic: str, lanes: int) -> set[str] | None:
    """Register tile of 6 or 4 rows (ROW_TILES) x two vectors of output channels (one when the
    channels are an odd number of vectors), the reduction in steps of four inputs, each step
    one intrinsic per vector and row; output-channel panels outside the row tiles (a panel of
    weights stays in cache while the rows stream by), tiles spread over the cores (with the
    batch loops of a per-head product, attention's); the rescale epilogue runs on the tile.
    None (nothing changed) when the block does not fit the tile."""
    *batch, m, n, k = sch.get_loops(block)
    extent_m, extent_n = int(sch.get(m).extent), int(sch.get(n).extent)
    rows = next((r for r in ROW_TILES if extent_m % r == 0), 0)
    if not rows or extent_n % lanes or int(sch.get(k).extent) % 4 \
            or not _weight_in_dot_layout(sch.get(block), lanes):
        return None
    vectors = 2 if extent_n % (2 * lanes) == 0 else 1
    mo, mi = sch.split(m, [None, rows])
    no, ni, nl = sch.split(n, [None, vectors, lanes])
    ko, kl = sch.split(k, [None, 4])
    sch.reorder(*batch, no, mo, ko, mi, ni, nl, kl)
    acc = local_accumulator(sch, block)
    sch.reverse_compute_at(acc, mo)
    sch.unroll(mi)
    sch.unroll(ni)
    sch.vectorize(sch.get_loops(acc)[-1])
    placed = {sch.get(acc).name_hint}
    placed |= _real_rows_on_tile(sch, acc, mo, len(batch) + 2)
    # tasks are column panels, as in the float rule: a task per register tile costs a
    # workspace allocation for its accumulator each, which dominated the kernel
    sch.parallel(sch.fuse(*batch, no) if batch else no)
    init = vectorized_init(sch, block, ko)
    names = placed | {sch.get(b).name_hint for b in (block, init)}
    sch.tensorize(nl, intrinsic)  # replaces the block by its "_o" form
    return names | {f"{sch.get(init).name_hint.removesuffix('_init')}_update_o"}


def _real_rows_on_tile(sch, write_back, tile_loop, rank: int) -> set[str]:
    """Rows padded to the tile's height (197 -> 198) leave the rescale of the real rows as a
    block of its own (a smaller output, so it is not inlined into the write-back). Left
    alone, it ran as a second parallel pass over an int32 copy of the whole product, split
    by rows where the tiles are split by column panels (ViT W8A8 kernels 3-13% slower);
    placed at the tile, it reads the accumulators and writes the real rows (a guard skips the
    padding). Returns the name of the block placed, if any."""
    consumers = sch.get_consumers(write_back)
    if len(consumers) != 1 or len(sch.get_loops(consumers[0])) != rank:
        return set()
    sch.reverse_compute_at(consumers[0], tile_loop)
    sch.vectorize(sch.get_loops(consumers[0])[-1])
    sch.compute_inline(write_back)  # reads the accumulators: no int32 copy of the product
    return {sch.get(consumers[0]).name_hint}
