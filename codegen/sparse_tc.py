"""2:4-sparse linear layers on NVIDIA's sparse tensor cores (`mma.sp`, sm_80 and later).

`sparse_linear` lowers to one TE kernel, `sparse_matmul` (see relax_lower), that any target can
schedule. For CUDA in half precision, that kernel is replaced by a hand-written one with the
same parameters: the weight is operand A of `mma.sp.m16n8k32` (16 output features by 32 input
channels, stored as the 16 kept values per row and their 2-bit positions, which is exactly
honer's compressed form), eight tokens are operand B, accumulation is float32. Two kernels:

- few tokens (decoding): each block owns 16 output features by 8 tokens; its warps split the
  input channels between them and add their partial tiles through shared memory, so a single
  token still keeps the GPU busy (`sparse_tc_kernel`);
- many tokens: blocks of 64 output features by 64 tokens, four warps of 32 x 32 (2 x 4
  fragments, so every weight fragment a warp reads serves four token fragments and every
  token fragment two weight fragments), each step of 32 input channels staged in shared
  memory with coalesced loads and double-buffered (`sparse_tc_tiled_kernel`, whose body is
  the device function `honer_sparse_tiles` below; the tokens are cast to half before it).
  Loading fragments straight from global memory instead (no staging, float tokens), a
  4096 x 4096 layer at 256 tokens ran at half the dense kernel's speed on an H200.

Fragment layouts (PTX ISA, "Matrix fragments for mma.sp.m16n8k32 with .f16"), for lane l,
g = l / 4 and t = l % 4:
- A (compressed, 16 x 16 halves): element i of 8 sits at row (i % 4) / 2 * 8 + g, compressed
  column i / 4 * 8 + t * 2 + i % 2;
- B (32 x 8): element i at row i / 2 * 8 + t * 2 + i % 2, column g;
- C (16 x 8 floats): element i at row i / 2 * 8 + g, column t * 2 + i % 2;
- metadata, sparsity selector 0: lanes with t = 0 and 1 each give one 32-bit word, t = 0 for
  input channels 0-15 of the step and t = 1 for 16-31; its low 16 bits are row g's positions
  (2 bits each, groups in order, the first kept position in the lower bits), the high 16 bits
  row g + 8's. honer's index bytes are in that order already: two bytes per 16 channels.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.op import astype

from .cuda_kernels import replace_kernels

KERNEL = "sparse_matmul"  # the TE kernel's name this replaces
MMA_SP = "honer_mma_sp_m16n8k32"
SPARSE_TILES = "honer_sparse_tiles"
TILE_N, TILE_M, STEP_K = 16, 8, 32
MAX_SPLIT = 8  # warps per block sharing one tile's input channels
TILE = 64  # the tiled kernel's block: output features and tokens
TILED_MIN_ROWS = 32  # fewer tokens leave the tiled kernel's warps mostly idle

# The device function the kernels call: the PTX is written out here (TVM's own mma.sp
# intrinsic changed shape between releases), packed to halves in registers.
DEVICE_SOURCE = r"""
#ifndef HONER_WARP_EMULATOR  // tests/codegen/warp_emulator.h runs these functions on a CPU
#include <cuda_fp16.h>
__device__ __forceinline__ void honer_mma_sp_regs(float* acc, const unsigned* A,
                                                  const unsigned* B, unsigned meta) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]), "r"(B[2]),
        "r"(B[3]), "r"(meta));
}

// Four 8 x 8 matrices of halves from shared memory: lane l gives the address of row l % 8 of
// matrix l / 8 (16 bytes), and receives in r[j] row l / 4, columns 2 (l % 4), + 1 of matrix j.
__device__ __forceinline__ void honer_ldmatrix_x4(unsigned* r, const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
}
#endif

__device__ __forceinline__ void honer_mma_sp_m16n8k32(float* acc, const float* a,
                                                      const float* b, unsigned meta) {
  __half2 ah[4], bh[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    ah[i] = __floats2half2_rn(a[2 * i], a[2 * i + 1]);
    bh[i] = __floats2half2_rn(b[2 * i], b[2 * i + 1]);
  }
  honer_mma_sp_regs(acc, reinterpret_cast<const unsigned*>(ah),
                    reinterpret_cast<const unsigned*>(bh), meta);
}

__device__ __forceinline__ unsigned honer_half2_bits(__half lo, __half hi) {
  __half2 h = __halves2half2(lo, hi);
  return *reinterpret_cast<unsigned*>(&h);
}

// Four consecutive weight values as halves (8 bytes).
__device__ __forceinline__ uint2 honer_four_halves(const __half* v) {
  return *reinterpret_cast<const uint2*>(v);
}
__device__ __forceinline__ uint2 honer_four_halves(const signed char* v) {
  const unsigned raw = *reinterpret_cast<const unsigned*>(v);
  const signed char* b = reinterpret_cast<const signed char*>(&raw);
  return make_uint2(honer_half2_bits(__int2half_rn(b[0]), __int2half_rn(b[1])),
                    honer_half2_bits(__int2half_rn(b[2]), __int2half_rn(b[3])));
}

// y[m, n] = scale[n] * sum_k x[m, k] w[n, k] for the block tile (bn, bm) of 64 output
// features x 64 tokens, four warps (128 threads) of 32 x 32, each 2 x 4 fragments of 16 x 8
// (layouts: see sparse_tc.py's docstring). x is half [M, K]; the weight is its kept values
// [K / 2, N] and positions [K / 8, N]. Each step of 32 input channels is staged in shared
// memory by all 128 threads with coalesced loads, double-buffered: the next step's loads are
// in flight while the warps multiply the current one. Staged so a fragment register is one
// shared load: kept values as half2 pairs of consecutive rows, positions as the metadata
// words themselves, tokens read by ldmatrix (one instruction per token fragment).
template <typename V>
__device__ __forceinline__ void honer_sparse_tiles(
    const __half* __restrict__ x, const V* __restrict__ values,
    const unsigned char* __restrict__ index, const float* __restrict__ scale,
    float* __restrict__ y, int M, int K, int N, int bn, int bm, int warp, int lane) {
  // pads: the fragment reads of a warp fall in 32 different banks
  __shared__ __align__(16) unsigned s_pairs[2][8][64 + 8];  // [kc / 2][n]: (kc, kc + 1)
  __shared__ __align__(16) unsigned s_meta[2][2][32];       // [half of the step][group of n]
  __shared__ __align__(16) __half s_x[2][64][32 + 8];       // [token][k]
  const int tid = warp * 32 + lane, g = lane >> 2, t = lane & 3;
  const int n_tile = bn * 64, m_tile = bm * 64;
  // this thread's share of a step: 4 columns of a pair of value rows; one metadata word
  // (threads < 64: half h of the step, output features n and n + 8); 16 inputs of a token
  const int v_pair = tid / 16, v_col = (tid % 16) * 4;
  const int w_half = (tid / 32) & 1, w_group = tid % 32;
  const int w_n = n_tile + w_group / 8 * 16 + w_group % 8;
  const int x_row = tid / 2, x_col = (tid % 2) * 16;
  const bool x_live = m_tile + x_row < M;
  const __half* x_at = x + (size_t)(x_live ? m_tile + x_row : 0) * K + x_col;
  uint2 r_even, r_odd;
  unsigned r_meta = 0;
  uint4 r_x[2];
  auto load = [&](int s) {
    const V* v = values + (size_t)(s * 16 + 2 * v_pair) * N + n_tile + v_col;
    r_even = honer_four_halves(v);
    r_odd = honer_four_halves(v + N);
    if (tid < 64) {
      const unsigned char* i = index + (size_t)(s * 4 + 2 * w_half) * N + w_n;
      r_meta = (unsigned)i[0] | (unsigned)i[N] << 8 | (unsigned)i[8] << 16
             | (unsigned)i[N + 8] << 24;
    }
    const uint4 zero = make_uint4(0, 0, 0, 0);
    r_x[0] = x_live ? *reinterpret_cast<const uint4*>(x_at + s * 32) : zero;
    r_x[1] = x_live ? *reinterpret_cast<const uint4*>(x_at + s * 32 + 8) : zero;
  };
  auto store = [&](int buf) {
    const __half* e = reinterpret_cast<const __half*>(&r_even);
    const __half* o = reinterpret_cast<const __half*>(&r_odd);
    *reinterpret_cast<uint4*>(&s_pairs[buf][v_pair][v_col]) = make_uint4(
        honer_half2_bits(e[0], o[0]), honer_half2_bits(e[1], o[1]),
        honer_half2_bits(e[2], o[2]), honer_half2_bits(e[3], o[3]));
    if (tid < 64) s_meta[buf][w_half][w_group] = r_meta;
    *reinterpret_cast<uint4*>(&s_x[buf][x_row][x_col]) = r_x[0];
    *reinterpret_cast<uint4*>(&s_x[buf][x_row][x_col + 8]) = r_x[1];
  };
  const int wn = (warp & 1) * 32, wm = (warp >> 1) * 32;  // the warp's corner in the tile
  float acc[2][4][4];
#pragma unroll
  for (int f = 0; f < 32; ++f) acc[f / 16][f / 4 % 4][f % 4] = 0.f;
  const int steps = K / 32;
  load(0);
  store(0);
  __syncthreads();
  for (int s = 0; s < steps; ++s) {
    const int buf = s & 1;
    if (s + 1 < steps) load(s + 1);
    unsigned a[2][4], meta[2], b[4][4];
#pragma unroll
    for (int fi = 0; fi < 2; ++fi) {
#pragma unroll
      for (int p = 0; p < 4; ++p)  // elements 2p, 2p + 1: compressed rows kc, kc + 1
        a[fi][p] = s_pairs[buf][p / 2 * 4 + t][wn + fi * 16 + p % 2 * 8 + g];
      meta[fi] = s_meta[buf][lane & 1][(wn / 16 + fi) * 8 + g];
    }
#pragma unroll
    for (int fj = 0; fj < 4; ++fj)  // b[fj][p]: tokens x input channels 8p .. 8p + 7
      honer_ldmatrix_x4(b[fj], &s_x[buf][wm + fj * 8 + lane % 8][lane / 8 * 8]);
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 4; ++fj) honer_mma_sp_regs(acc[fi][fj], a[fi], b[fj], meta[fi]);
    if (s + 1 < steps) store(buf ^ 1);
    __syncthreads();
  }
#pragma unroll
  for (int fi = 0; fi < 2; ++fi)
#pragma unroll
    for (int fj = 0; fj < 4; ++fj)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = n_tile + wn + fi * 16 + i / 2 * 8 + g;
        const int m = m_tile + wm + fj * 8 + t * 2 + i % 2;
        if (m < M) y[(size_t)m * N + n] = acc[fi][fj][i] * scale[n];
      }
}
"""


def fits(rows: int, in_features: int, out_features: int) -> bool:
    return in_features % STEP_K == 0 and out_features % TILE_N == 0 and rows > 0


def tiled(rows: int, out_features: int) -> bool:
    """Whether the many-token kernel takes the layer (else the split-input-channel one)."""
    return rows >= TILED_MIN_ROWS and out_features % TILE == 0


def on_tensor_cores(mod: tvm.IRModule) -> tvm.IRModule:
    """Every call of a `sparse_matmul` kernel whose shapes fit -> a tensor-core kernel; float
    values are cast to half where they are read, so the artifact stores them in half (see
    gpu._half_params)."""
    return replace_kernels(mod, KERNEL, "_tc", _on_sparse_tensor_cores)


def called_in(cuda_source: str) -> bool:
    """Whether the kernels call DEVICE_SOURCE's functions."""
    return f"{MMA_SP}(" in cuda_source or f"{SPARSE_TILES}(" in cuda_source


def _on_sparse_tensor_cores(builder: relax.BlockBuilder, func: tvm.tirx.PrimFunc,
                            args: list[relax.Expr]):
    x, values, _, _, _ = func.params
    rows, k = (int(d) for d in x.shape)
    n, dtype = int(values.shape[1]), str(values.dtype)
    if not fits(rows, k, n):
        return None
    if dtype == "float32":
        args[1] = builder.emit(astype(args[1], "float16"))
        dtype = "float16"
    if not tiled(rows, n):
        return sparse_tc_kernel(rows, k, n, dtype), args
    args[0] = builder.emit(astype(args[0], "float16"))  # read by every block of its rows
    return sparse_tc_tiled_kernel(rows, k, n, dtype), args


def sparse_tc_kernel(rows: int, in_features: int, out_features: int,
                     values_dtype: str) -> tvm.tirx.PrimFunc:
    """y[m, n] = scale[n] * sum_k x[m, k] w[n, k], w 2:4-sparse as (values [in/2, out], index
    [in/8, out]), on mma.sp. Inputs and weights are rounded to half, sums are float32."""
    from tvm.script import tirx as T

    steps = in_features // STEP_K
    split = min(MAX_SPLIT, steps)
    per_warp = (steps + split - 1) // split
    m_tiles, n_tiles = (rows + TILE_M - 1) // TILE_M, out_features // TILE_N
    K, N, M = in_features, out_features, rows  # noqa: N806 - the matrix names

    @T.prim_func(private=True)
    def kernel(x: T.Buffer((M, K), "float32"), values: T.Buffer((K // 2, N), values_dtype),
               index: T.Buffer((K // 8, N), "uint8"), scale: T.Buffer((1, N), "float32"),
               y: T.Buffer((M, N), "float32")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8})
        bn = T.launch_thread("blockIdx.x", n_tiles)
        bm = T.launch_thread("blockIdx.y", m_tiles)
        warp = T.launch_thread("threadIdx.y", split)
        lane = T.launch_thread("threadIdx.x", 32)
        a = T.decl_buffer((8,), "float32", scope="local")
        b = T.decl_buffer((8,), "float32", scope="local")
        acc = T.decl_buffer((4,), "float32", scope="local")
        total = T.decl_buffer((1,), "float32", scope="local")
        partial = T.decl_buffer((split * 4 * 32,), "float32", scope="shared")
        for i in T.unroll(4):
            acc[i] = T.float32(0)
        for s in range(per_warp):
            if warp * per_warp + s < steps:
                for i in T.unroll(8):
                    a[i] = T.Cast("float32", values[
                        (warp * per_warp + s) * 16 + i // 4 * 8 + lane % 4 * 2 + i % 2,
                        bn * 16 + i % 4 // 2 * 8 + lane // 4])
                for i in T.unroll(8):
                    b[i] = T.if_then_else(
                        bm * 8 + lane // 4 < M,
                        x[T.min(bm * 8 + lane // 4, M - 1),
                          (warp * per_warp + s) * 32 + i // 2 * 8 + lane % 4 * 2 + i % 2],
                        T.float32(0))
                T.evaluate(T.call_extern(
                    "void", MMA_SP, acc.data, a.data, b.data,
                    T.Cast("uint32", index[(warp * per_warp + s) * 4 + lane % 2 * 2,
                                           bn * 16 + lane // 4])
                    | T.shift_left(T.Cast("uint32", index[
                        (warp * per_warp + s) * 4 + lane % 2 * 2 + 1, bn * 16 + lane // 4]),
                        T.uint32(8))
                    | T.shift_left(T.Cast("uint32", index[
                        (warp * per_warp + s) * 4 + lane % 2 * 2, bn * 16 + lane // 4 + 8]),
                        T.uint32(16))
                    | T.shift_left(T.Cast("uint32", index[
                        (warp * per_warp + s) * 4 + lane % 2 * 2 + 1, bn * 16 + lane // 4 + 8]),
                        T.uint32(24))))
        for i in T.unroll(4):
            partial[(warp * 4 + i) * 32 + lane] = acc[i]
        T.tvm_storage_sync("shared")
        if warp == 0:
            for i in T.unroll(4):
                total[0] = T.float32(0)
                for w in range(split):
                    total[0] = total[0] + partial[(w * 4 + i) * 32 + lane]
                if bm * 8 + lane % 4 * 2 + i % 2 < M:
                    y[bm * 8 + lane % 4 * 2 + i % 2, bn * 16 + i // 2 * 8 + lane // 4] = \
                        total[0] * scale[0, bn * 16 + i // 2 * 8 + lane // 4]

    return kernel


def sparse_tc_tiled_kernel(rows: int, in_features: int, out_features: int,
                           values_dtype: str) -> tvm.tirx.PrimFunc:
    """The same product as `sparse_tc_kernel` with x in half, for many tokens: blocks of 64
    output features by 64 tokens, the body in the device function `honer_sparse_tiles`
    (DEVICE_SOURCE)."""
    from tvm.script import tirx as T

    K, N, M = in_features, out_features, rows  # noqa: N806 - the matrix names

    @T.prim_func(private=True)
    def kernel(x: T.Buffer((M, K), "float16"), values: T.Buffer((K // 2, N), values_dtype),
               index: T.Buffer((K // 8, N), "uint8"), scale: T.Buffer((1, N), "float32"),
               y: T.Buffer((M, N), "float32")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8})
        bn = T.launch_thread("blockIdx.x", N // TILE)
        bm = T.launch_thread("blockIdx.y", (M + TILE - 1) // TILE)
        warp = T.launch_thread("threadIdx.y", 4)
        lane = T.launch_thread("threadIdx.x", 32)
        T.evaluate(T.call_extern("void", SPARSE_TILES, x.data, values.data, index.data,
                                 scale.data, y.data, M, K, N, bn, bm, warp, lane))

    return kernel
