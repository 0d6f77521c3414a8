"""W8A8 linear layers on NVIDIA's int8 tensor cores (`mma.sync.m16n8k32`, u8 x s8 -> s32, sm_80
and later).

relax_lower's `int8_matmul` kernel of an int8_linear (uint8 activation rows, padded, by an
int8 weight stored [out, in], rescaled to float with the zero-point correction folded into a
per-channel offset) is replaced by a hand-written kernel with the same parameters: the tokens
are operand A (16 x 32 uint8), the weight operand B (32 x 8 int8), the sums int32, exact for
any int8 weights (unlike the CPUs' vpmaddubsw, no pair of products is saturated). Each warp
owns 32 tokens by 32 output channels (2 x 4 fragments), so every fragment it loads serves
two or four products; a block is one warp or 2 x 2 (cuda_kernels.warps_per_side). The
rescale is the kernel's epilogue. The int8 products of int8 attention keep dlight's generic
schedule.

Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k32" with .u8/.s8), for lane l,
g = l / 4 and t = l % 4, each register four bytes in increasing column (A) or row (B) order:
- A (16 x 32): register r holds row g + 8 (r % 2), columns 16 (r / 2) + 4 t .. + 3;
- B (32 x 8): register r holds rows 16 r + 4 t .. + 3, column g;
- C (16 x 8, int32): element i at row g + 8 (i / 2), column 2 t + i % 2.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .cuda_kernels import WARP_TILE, replace_kernels, warps_per_side

KERNEL = "int8_matmul"  # relax_lower's kernel this replaces (attention's share the name)
INT8_TILES = "honer_int8_tiles"
STEP_K = 32

DEVICE_SOURCE = r"""
#ifndef HONER_WARP_EMULATOR  // tests/codegen/warp_emulator.h runs these functions on a CPU
__device__ __forceinline__ void honer_mma_u8s8(int* acc, const unsigned* A, const unsigned* B) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]));
}
#endif

// y[m, n] = float(sum_k xq[m, k] q[n, k]) * scale[n] + offset[n] for m < rows, n < N, in the
// block tile (bm, bn) of side x side warps: the warp `warp` owns tokens m0 .. m0 + 31 and
// channels n0 .. n0 + 31 as 2 x 4 fragments of 16 x 8. xq has `padded` rows, K % 32 == 0.
__device__ __forceinline__ void honer_int8_tiles(
    const unsigned char* __restrict__ xq, const signed char* __restrict__ q,
    const float* __restrict__ scale, const float* __restrict__ offset, float* __restrict__ y,
    int padded, int rows, int K, int N, int side, int bm, int bn, int warp, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const int m0 = (bm * side + warp / side) * 32, n0 = (bn * side + warp % side) * 32;
  int acc[2][4][4];
#pragma unroll
  for (int f = 0; f < 32; ++f) acc[f / 16][f / 4 % 4][f % 4] = 0;
  const unsigned* a_rows[2][2];  // this lane's rows g and g + 8 of each token fragment
#pragma unroll
  for (int fi = 0; fi < 2; ++fi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = min(m0 + fi * 16 + h * 8 + g, padded - 1);
      a_rows[fi][h] = reinterpret_cast<const unsigned*>(xq + (size_t)m * K);
    }
  const unsigned* b_rows[4];  // this lane's channel g of each weight fragment
#pragma unroll
  for (int fj = 0; fj < 4; ++fj) {
    const int n = min(n0 + fj * 8 + g, N - 1);
    b_rows[fj] = reinterpret_cast<const unsigned*>(q + (size_t)n * K);
  }
#pragma unroll 2
  for (int s = 0; s < K / 32; ++s) {
    unsigned a[2][4], b[4][2];
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int r = 0; r < 4; ++r) a[fi][r] = a_rows[fi][r % 2][s * 8 + r / 2 * 4 + t];
#pragma unroll
    for (int fj = 0; fj < 4; ++fj)
#pragma unroll
      for (int r = 0; r < 2; ++r) b[fj][r] = b_rows[fj][s * 8 + r * 4 + t];
#pragma unroll
    for (int fi = 0; fi < 2; ++fi)
#pragma unroll
      for (int fj = 0; fj < 4; ++fj) honer_mma_u8s8(acc[fi][fj], a[fi], b[fj]);
  }
#pragma unroll
  for (int fi = 0; fi < 2; ++fi)
#pragma unroll
    for (int fj = 0; fj < 4; ++fj)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = m0 + fi * 16 + i / 2 * 8 + g, n = n0 + fj * 8 + t * 2 + i % 2;
        if (m < rows && n < N) y[(size_t)m * N + n] = (float)acc[fi][fj][i] * scale[n] + offset[n];
      }
}
"""


def on_tensor_cores(mod: tvm.IRModule) -> tvm.IRModule:
    """Every int8_linear's `int8_matmul` kernel whose reduction is whole steps of 32 -> the
    tensor-core kernel."""
    return replace_kernels(mod, KERNEL, "_tc", _on_int8_tensor_cores)


def called_in(cuda_source: str) -> bool:
    """Whether the kernels call DEVICE_SOURCE's functions."""
    return f"{INT8_TILES}(" in cuda_source


def _on_int8_tensor_cores(_builder: relax.BlockBuilder, func: tvm.tirx.PrimFunc,
                          args: list[relax.Expr]):
    if len(func.params) != 5:  # attention's int8 products have other operands
        return None
    shapes = [tuple(int(d) for d in p.shape) for p in func.params]
    dtypes = [str(p.dtype) for p in func.params]
    if dtypes != ["uint8", "int8", "float32", "float32", "float32"] or \
            [len(s) for s in shapes] != [2, 2, 1, 1, 2]:
        return None
    (padded, k), (n, k_w), (rows, n_y) = shapes[0], shapes[1], shapes[4]
    if k_w != k or n_y != n or k % STEP_K:  # a weight stored [out, in], whole steps
        return None
    return int8_tc_kernel(padded, rows, k, n), args


def int8_tc_kernel(padded: int, rows: int, in_features: int,
                   out_features: int) -> tvm.tirx.PrimFunc:
    from tvm.script import tirx as T

    K, N, P = in_features, out_features, padded  # noqa: N806 - the matrix names
    side = warps_per_side(rows, N)
    block = side * WARP_TILE

    @T.prim_func(private=True)
    def kernel(xq: T.Buffer((P, K), "uint8"), q: T.Buffer((N, K), "int8"),
               scale: T.Buffer((N,), "float32"), offset: T.Buffer((N,), "float32"),
               y: T.Buffer((rows, N), "float32")):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8})
        bm = T.launch_thread("blockIdx.x", (rows + block - 1) // block)
        bn = T.launch_thread("blockIdx.y", (N + block - 1) // block)
        warp = T.launch_thread("threadIdx.y", side * side)
        lane = T.launch_thread("threadIdx.x", 32)
        T.evaluate(T.call_extern("void", INT8_TILES, xq.data, q.data, scale.data, offset.data,
                                 y.data, P, rows, K, N, side, bm, bn, warp, lane))

    return kernel
