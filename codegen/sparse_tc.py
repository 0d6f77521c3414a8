"""2:4-sparse linear layers on NVIDIA's sparse tensor cores (`mma.sp`, sm_80 and later).

`sparse_linear` lowers to one TE kernel, `sparse_matmul` (see relax_lower), that any target can
schedule. For CUDA in half precision, that kernel is replaced by a hand-written one with the
same parameters: the weight is operand A of `mma.sp.m16n8k32` (16 output features by 32 input
channels, stored as the 16 kept values per row and their 2-bit positions, which is exactly
honer's compressed form), eight tokens are operand B, accumulation is float32. Each block owns
16 output features by 8 tokens; its warps split the input channels between them and add their
partial tiles through shared memory, so a single token (decoding) still keeps the GPU busy.

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

KERNEL = "sparse_matmul"  # the TE kernel's name this replaces
MMA_SP = "honer_mma_sp_m16n8k32"
TILE_N, TILE_M, STEP_K = 16, 8, 32
MAX_SPLIT = 8  # warps per block sharing one tile's input channels

# The device function the kernels call: the PTX is written out here (TVM's own mma.sp
# intrinsic changed shape between releases), packed to halves in registers.
DEVICE_SOURCE = r"""
#include <cuda_fp16.h>
__device__ __forceinline__ void honer_mma_sp_m16n8k32(float* acc, const float* a,
                                                      const float* b, unsigned meta) {
  __half2 ah[4], bh[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    ah[i] = __floats2half2_rn(a[2 * i], a[2 * i + 1]);
    bh[i] = __floats2half2_rn(b[2 * i], b[2 * i + 1]);
  }
  const unsigned* A = reinterpret_cast<const unsigned*>(ah);
  const unsigned* B = reinterpret_cast<const unsigned*>(bh);
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]), "r"(B[2]),
        "r"(B[3]), "r"(meta));
}
"""


def fits(rows: int, in_features: int, out_features: int) -> bool:
    return in_features % STEP_K == 0 and out_features % TILE_N == 0 and rows > 0


def on_tensor_cores(mod: tvm.IRModule) -> tvm.IRModule:
    """Every call of a `sparse_matmul` kernel whose shapes fit -> the tensor-core kernel; float
    values are cast to half where they are read, so the artifact stores them in half (see
    gpu._half_params)."""
    rewriter = _SparseOnTensorCores(mod)
    main = rewriter.visit_expr(mod["main"])
    out = rewriter.builder_.get()
    out["main"] = main
    return relax.transform.DeadCodeElimination()(out)  # the replaced kernels


def uses_tensor_cores(cuda_source: str) -> bool:
    return f"{MMA_SP}(" in cuda_source


@relax.expr_functor.mutator
class _SparseOnTensorCores(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod = mod

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"
                and call.args[0].name_hint.startswith(KERNEL)):
            return call
        x, values, _, _, _ = self.mod[call.args[0]].params
        rows, k = (int(d) for d in x.shape)
        n, dtype = int(values.shape[1]), str(values.dtype)
        if not fits(rows, k, n):
            return call
        args = list(call.args[1].fields)
        if dtype == "float32":
            args[1] = self.builder_.emit(astype(args[1], "float16"))
            dtype = "float16"
        kernel = self.builder_.add_func(sparse_tc_kernel(rows, k, n, dtype),
                                        call.args[0].name_hint + "_tc")
        return relax.Call(call.op, [kernel, relax.Tuple(args)], call.attrs, call.ty_args)


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
