"""2:4-sparse linear layers on NVIDIA's sparse tensor cores (`mma.sp`, sm_80 and later).

`sparse_linear` lowers to one TE kernel, `sparse_matmul` (see relax_lower), that any target can
schedule. For CUDA in half precision, that kernel is replaced by a hand-written one with the
same parameters: the weight is operand A of `mma.sp.m16n8k32` (16 output features by 32 input
channels, stored as the 16 kept values per row and their 2-bit positions, which is exactly
honer's compressed form), eight tokens are operand B, accumulation is float32. Two kernels:

- few tokens (decoding): each block owns 16 output features by 8 tokens; its warps split the
  input channels between them and add their partial tiles through shared memory, so a single
  token still keeps the GPU busy (`sparse_tc_kernel`);
- many tokens: blocks of 64 or 128 output features by 64 tokens, warps of 32 x 32 (2 x 4
  fragments, so every weight fragment a warp reads serves four token fragments and every
  token fragment two weight fragments), stages of 32 to 128 input channels in shared memory
  (`sparse_tc_tiled_kernel`; the tokens are cast to half before it, the layer's bias is
  added in its epilogue). Half values go through a cp.async pipeline, 3 or 4 stages in
  dynamic shared memory (`honer_sparse_pipeline` below); int8 values, which are converted
  to half on the way, are loaded into registers while the warps multiply and stored to
  shared memory after (`honer_sparse_tiles`). The block is the target option `sparse_tile`
  (TILES), sized to the layer by `choose_tile`.
  Measured on an H200 (benchmarks/results/gpu_check_sparse.json), each against honer's
  dense fp16 layer with its fastest tensor-core tile: fragments loaded straight from global
  memory ran at half its speed; 64 x 64 blocks staging 32 channels through registers at
  0.8x; 128 x 64 blocks staging 128 channels at 1.24x (4096 x 4096, 256 tokens) but 0.91x
  (8192 x 8192); the pipeline at 1.35x and 1.06x.

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

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.op import astype

from .cuda_kernels import fold_bias_adds, replace_kernels

KERNEL = "sparse_matmul"  # the TE kernel's name this replaces
MMA_SP = "honer_mma_sp_m16n8k32"
SPARSE_TILES = "honer_sparse_tiles"  # a template: <warps_n, steps, groups, buffers>
SPARSE_PIPELINE = "honer_sparse_pipeline"  # a template: <warps_n, steps, stages in buffers>
TILE_N, TILE_M, STEP_K = 16, 8, 32
MAX_SPLIT = 8  # warps per block sharing one tile's input channels
TILED_MIN_ROWS = 32  # fewer tokens leave the tiled kernel's warps mostly idle
BIAS_FREE = "honer.bias_free"  # attribute of a tiled kernel without a bias
TILE_ATTR = "honer.sparse_tile"
# Wide blocks once there are about as many as SMs (H100/H200: 132): on an H200, 4096 x 4096 at
# 256 tokens ran 0.054 ms in 128 blocks of 128 outputs, 0.060 in 256 of 64; at 64 tokens
# (32 or 64 blocks) the narrow block won, 0.049 against 0.052 (gpu_check_sparse.json)
MIN_BLOCKS = 96


@dataclass(frozen=True)
class SparseTile:
    """The tiled kernel's block: 32 x `warps_n` output features by 64 tokens (warps_n x 2
    warps of 32 x 32), `steps` steps of 32 input channels per shared-memory stage; `groups`
    such sets of warps split the input channels. The next stage's loads wait in registers
    while the warps multiply; with `buffers` 2 the stages alternate between two shared
    buffers (one barrier a stage), with 1 they share one (two barriers, half the shared
    memory). With `pipeline` S, the stages go to shared memory by cp.async instead, S - 1 in
    flight, in S buffers of dynamic shared memory (half values only)."""

    warps_n: int
    steps: int
    groups: int = 1
    buffers: int = 2
    pipeline: int = 0

    @property
    def warps(self) -> int:
        return 2 * self.warps_n * self.groups

    @property
    def outputs(self) -> int:
        return 32 * self.warps_n

    @property
    def name(self) -> str:
        return (f"{self.outputs}x64x{32 * self.steps}" + ("s2" if self.groups == 2 else "")
                + (f"p{self.pipeline}" if self.pipeline else ""))

    @property
    def dynamic_shared_bytes(self) -> int:
        """The pipeline's buffers (DEVICE_SOURCE's honer_sparse_pipeline_bytes): per stage,
        the kept values, positions and tokens, rows padded as there."""
        if not self.pipeline:
            return 0
        values = 16 * self.steps * (self.outputs + 8) * 2
        positions = 4 * self.steps * (self.outputs + 16)
        tokens = 64 * (32 * self.steps + 8) * 2
        return self.pipeline * (values + positions + tokens)


# in the order "auto" prefers them (choose_tile): the pipelined ones first, which were the
# fastest at every shape measured (gpu_check_sparse.json), each width's fastest first
TILES = (SparseTile(4, 4, pipeline=3), SparseTile(4, 2, pipeline=4),
         SparseTile(4, 2, pipeline=3), SparseTile(2, 2, pipeline=4), SparseTile(2, 4, pipeline=3),
         SparseTile(4, 4, buffers=1), SparseTile(4, 2), SparseTile(4, 1),
         SparseTile(2, 4, buffers=1), SparseTile(2, 2), SparseTile(2, 1, 2), SparseTile(2, 1))
TILE_NAMES = ("auto", *(t.name for t in TILES))

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

// The same, transposed: lane (g, t) receives in r[j] rows 2 t and 2 t + 1, column g of
// matrix j (the two halves of a column pair).
__device__ __forceinline__ void honer_ldmatrix_x4_trans(unsigned* r, const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
}

// 16 bytes from global to shared memory without passing through registers; with
// src_bytes 0 the 16 bytes are zeros. Copies issued between two commits form a group;
// wait<N> returns once at most the N newest groups are still in flight.
__device__ __forceinline__ void honer_cp_async16(void* dst, const void* src, int src_bytes) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(address), "l"(src), "r"(src_bytes));
}
// (clobbering memory: the compiler must not move shared-memory reads across them)
__device__ __forceinline__ void honer_cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void honer_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
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

// A warp's 32 x 32 accumulators (2 x 4 fragments, corner n0, m0) to y, scaled, plus the
// bias with BIAS; tokens past M are not written.
template <bool BIAS>
__device__ __forceinline__ void honer_sparse_store(const float (&acc)[2][4][4],
                                                   const float* __restrict__ scale,
                                                   const float* __restrict__ bias,
                                                   float* __restrict__ y, int M, int N, int n0,
                                                   int m0, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int fi = 0; fi < 2; ++fi)
#pragma unroll
    for (int fj = 0; fj < 4; ++fj)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int n = n0 + fi * 16 + i / 2 * 8 + g;
        const int m = m0 + fj * 8 + t * 2 + i % 2;
        if (m < M) y[(size_t)m * N + n] = acc[fi][fj][i] * scale[n] + (BIAS ? bias[n] : 0.f);
      }
}

// y[m, n] = scale[n] * sum_k x[m, k] w[n, k] (+ bias[n] with BIAS: the layer's bias add
// folded in) for the block tile (bn, bm) of 32 WN output features x 64 tokens: G groups of
// WN x 2 warps (64 WN threads) of 32 x 32, each 2 x 4 fragments of 16 x 8 (layouts: see
// sparse_tc.py's docstring). x is half [M, K]; the weight is its kept values [K / 2, N] and
// positions [K / 8, N]. Each stage of KS steps of 32 input channels is staged in shared
// memory by all threads with coalesced loads while the next stage's loads are in flight;
// a stage gives the warps 8 KS mma.sp between barriers. With B = 2 buffers the stages
// alternate between them (one barrier per stage); with B = 1 (large stages, within the 48 KB
// of static shared memory) the next stage waits in registers until every warp is done with
// the buffer (two barriers). The G groups split the input channels (more warps to hide the
// loads' latency) and add up through shared memory. Staged so a fragment register is one
// shared load: kept values as half2 pairs of consecutive rows, positions as the metadata
// words themselves, tokens read by ldmatrix (one instruction per token fragment).
template <int WN, int KS, int G, int B, bool BIAS, typename V>
__device__ __forceinline__ void honer_sparse_tiles(
    const __half* __restrict__ x, const V* __restrict__ values,
    const unsigned char* __restrict__ index, const float* __restrict__ scale,
    const float* __restrict__ bias, float* __restrict__ y, int M, int K, int N, int bn, int bm,
    int block_warp, int lane) {
  constexpr int TN = 32 * WN;          // output features of the block
  constexpr int X_VECS = 4 / WN;       // 16-byte token loads per thread and step
  // pads: the fragment reads of a warp fall in 32 different banks
  __shared__ __align__(16) unsigned s_pairs_[G][B][KS][8][TN + 8];  // [kc / 2][n]: kc, kc + 1
  __shared__ __align__(16) unsigned s_meta_[G][B][KS][2][TN / 2];  // [half of step][n group]
  __shared__ __align__(16) __half s_x_[G][B][KS][64][32 + 8];      // [token][k]
  const int group = block_warp / (2 * WN), warp = block_warp % (2 * WN);
  auto& s_pairs = s_pairs_[group];
  auto& s_meta = s_meta_[group];
  auto& s_x = s_x_[group];
  const int tid = warp * 32 + lane, g = lane >> 2, t = lane & 3;
  const int n_tile = bn * TN, m_tile = bm * 64;
  // this thread's share of a step: 4 columns of a pair of value rows; one metadata word
  // (threads < TN: half h of the step, output features n and n + 8); 8 X_VECS inputs of a
  // token
  const int v_pair = tid / (TN / 4), v_col = (tid % (TN / 4)) * 4;
  const int w_half = tid / (TN / 2) & 1, w_group = tid % (TN / 2);
  const int w_n = n_tile + w_group / 8 * 16 + w_group % 8;
  const int x_row = tid / (4 / X_VECS), x_col = (tid % (4 / X_VECS)) * 8 * X_VECS;
  const bool x_live = m_tile + x_row < M;
  const __half* x_at = x + (size_t)(x_live ? m_tile + x_row : 0) * K + x_col;
  uint2 r_even[KS], r_odd[KS];
  unsigned r_meta[KS];
  uint4 r_x[KS][X_VECS];
  auto load = [&](int stage) {
#pragma unroll
    for (int j = 0; j < KS; ++j) {
      const int s = stage * KS + j;
      const V* v = values + (size_t)(s * 16 + 2 * v_pair) * N + n_tile + v_col;
      r_even[j] = honer_four_halves(v);
      r_odd[j] = honer_four_halves(v + N);
      if (tid < TN) {
        const unsigned char* i = index + (size_t)(s * 4 + 2 * w_half) * N + w_n;
        r_meta[j] = (unsigned)i[0] | (unsigned)i[N] << 8 | (unsigned)i[8] << 16
                  | (unsigned)i[N + 8] << 24;
      }
#pragma unroll
      for (int q = 0; q < X_VECS; ++q)
        r_x[j][q] = x_live ? *reinterpret_cast<const uint4*>(x_at + s * 32 + q * 8)
                           : make_uint4(0, 0, 0, 0);
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int j = 0; j < KS; ++j) {
      const __half* e = reinterpret_cast<const __half*>(&r_even[j]);
      const __half* o = reinterpret_cast<const __half*>(&r_odd[j]);
      *reinterpret_cast<uint4*>(&s_pairs[buf][j][v_pair][v_col]) = make_uint4(
          honer_half2_bits(e[0], o[0]), honer_half2_bits(e[1], o[1]),
          honer_half2_bits(e[2], o[2]), honer_half2_bits(e[3], o[3]));
      if (tid < TN) s_meta[buf][j][w_half][w_group] = r_meta[j];
#pragma unroll
      for (int q = 0; q < X_VECS; ++q)
        *reinterpret_cast<uint4*>(&s_x[buf][j][x_row][x_col + q * 8]) = r_x[j][q];
    }
  };
  const int wn = (warp % WN) * 32, wm = (warp / WN) * 32;  // the warp's corner in the tile
  float acc[2][4][4];
#pragma unroll
  for (int f = 0; f < 32; ++f) acc[f / 16][f / 4 % 4][f % 4] = 0.f;
  // the group's stages: first .. first + mine - 1; every group runs `per` rounds, so that
  // the barriers are the block's
  const int stages = K / (32 * KS), per = (stages + G - 1) / G, first = group * per;
  const int mine = min(per, stages - first);
  if (mine > 0) {
    load(first);
    store(0);
  }
  __syncthreads();
  for (int round = 0; round < per; ++round) {
    const int buf = B == 2 ? round & 1 : 0;
    if (round + 1 < mine) load(first + round + 1);
#pragma unroll
    for (int j = 0; j < KS; ++j) {
      if (round >= mine) break;
      unsigned a[2][4], meta[2], b[4][4];
#pragma unroll
      for (int fi = 0; fi < 2; ++fi) {
#pragma unroll
        for (int p = 0; p < 4; ++p)  // elements 2p, 2p + 1: compressed rows kc, kc + 1
          a[fi][p] = s_pairs[buf][j][p / 2 * 4 + t][wn + fi * 16 + p % 2 * 8 + g];
        meta[fi] = s_meta[buf][j][lane & 1][(wn / 16 + fi) * 8 + g];
      }
#pragma unroll
      for (int fj = 0; fj < 4; ++fj)  // b[fj][p]: tokens x input channels 8p .. 8p + 7
        honer_ldmatrix_x4(b[fj], &s_x[buf][j][wm + fj * 8 + lane % 8][lane / 8 * 8]);
#pragma unroll
      for (int fi = 0; fi < 2; ++fi)
#pragma unroll
        for (int fj = 0; fj < 4; ++fj)
          honer_mma_sp_regs(acc[fi][fj], a[fi], b[fj], meta[fi]);
    }
    if (B == 1) __syncthreads();
    if (round + 1 < mine) store(B == 2 ? buf ^ 1 : 0);
    __syncthreads();
  }
  if constexpr (G == 2) {  // group 1's sums to group 0's warp of the same corner
    __shared__ float s_sums[2 * WN][32][32];  // [warp][accumulator][lane]
    if (group == 1)
#pragma unroll
      for (int f = 0; f < 32; ++f) s_sums[warp][f][lane] = acc[f / 16][f / 4 % 4][f % 4];
    __syncthreads();
    if (group == 1) return;
#pragma unroll
    for (int f = 0; f < 32; ++f) acc[f / 16][f / 4 % 4][f % 4] += s_sums[warp][f][lane];
  }
  honer_sparse_store<BIAS>(acc, scale, bias, y, M, N, n_tile + wn, m_tile + wm, lane);
}

// The pipelined form of honer_sparse_tiles, for half values: the stages go from global to
// shared memory by cp.async, S - 1 of them in flight while the warps multiply one, in S
// buffers of dynamic shared memory (`smem`, honer_sparse_pipeline_bytes<WN, KS, S>()). Each
// buffer keeps the global layouts (kept values [kc][n], positions [k / 8][n] as bytes,
// tokens [m][k], rows padded so the warps' reads fall in different banks), so nothing stops
// in registers on the way: a value fragment is one transposed ldmatrix (a register's two
// halves are consecutive rows kc, kc + 1 of one column), a metadata word is put together
// from its four position bytes. One barrier per stage.
template <int WN, int KS>
struct HonerSparseStage {
  static constexpr int TN = 32 * WN;
  static constexpr int V_ROW = TN + 8, I_ROW = TN + 16, X_ROW = 32 * KS + 8;  // padded rows
  static constexpr int V_BYTES = 16 * KS * V_ROW * 2, I_BYTES = 4 * KS * I_ROW;
  static constexpr int BYTES = V_BYTES + I_BYTES + 64 * X_ROW * 2;  // a multiple of 16
};
template <int WN, int KS, int S>
constexpr int honer_sparse_pipeline_bytes() { return S * HonerSparseStage<WN, KS>::BYTES; }

template <int WN, int KS, int S, bool BIAS>
__device__ __forceinline__ void honer_sparse_pipeline(
    const __half* __restrict__ x, const __half* __restrict__ values,
    const unsigned char* __restrict__ index, const float* __restrict__ scale,
    const float* __restrict__ bias, float* __restrict__ y, unsigned char* smem, int M, int K,
    int N, int bn, int bm, int warp, int lane) {
  using L = HonerSparseStage<WN, KS>;
  constexpr int TN = L::TN, THREADS = 64 * WN;
  const int tid = warp * 32 + lane, g = lane >> 2;
  const int n_tile = bn * TN, m_tile = bm * 64;
  auto values_at = [&](int buf) { return reinterpret_cast<__half*>(smem + buf * L::BYTES); };
  auto index_at = [&](int buf) { return smem + buf * L::BYTES + L::V_BYTES; };
  auto x_at = [&](int buf) {
    return reinterpret_cast<__half*>(smem + buf * L::BYTES + L::V_BYTES + L::I_BYTES);
  };
  auto copy = [&](int stage, int buf) {  // every thread's share of a stage, 16 bytes a copy
    const int k0 = stage * 32 * KS;
    for (int c = tid; c < 16 * KS * TN / 8; c += THREADS) {  // 16 KS rows of kept values
      const int row = c / (TN / 8), col = c % (TN / 8) * 8;
      honer_cp_async16(values_at(buf) + row * L::V_ROW + col,
                       values + (size_t)(k0 / 2 + row) * N + n_tile + col, 16);
    }
    for (int c = tid; c < 4 * KS * TN / 16; c += THREADS) {  // 4 KS rows of positions
      const int row = c / (TN / 16), col = c % (TN / 16) * 16;
      honer_cp_async16(index_at(buf) + row * L::I_ROW + col,
                       index + (size_t)(k0 / 8 + row) * N + n_tile + col, 16);
    }
    for (int c = tid; c < 64 * 4 * KS; c += THREADS) {  // 64 tokens, zeros past the last
      const int row = c / (4 * KS), col = c % (4 * KS) * 8;
      const bool live = m_tile + row < M;
      honer_cp_async16(x_at(buf) + row * L::X_ROW + col,
                       x + (size_t)(live ? m_tile + row : 0) * K + k0 + col, live ? 16 : 0);
    }
  };
  const int wn = (warp % WN) * 32, wm = (warp / WN) * 32;  // the warp's corner in the tile
  float acc[2][4][4];
#pragma unroll
  for (int f = 0; f < 32; ++f) acc[f / 16][f / 4 % 4][f % 4] = 0.f;
  const int stages = K / (32 * KS);
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < stages) copy(s, s);
    honer_cp_async_commit();  // one group per stage, empty ones too: the wait counts groups
  }
  for (int stage = 0; stage < stages; ++stage) {
    honer_cp_async_wait<S - 2>();  // this stage's copies are done (this thread's) ...
    __syncthreads();  // ... and everyone's; and every warp is done with the previous buffer
    if (stage + S - 1 < stages) copy(stage + S - 1, (stage + S - 1) % S);
    honer_cp_async_commit();
    const int buf = stage % S;
    const __half* s_v = values_at(buf);
    const unsigned char* s_i = index_at(buf);
    const __half* s_x = x_at(buf);
#pragma unroll
    for (int j = 0; j < KS; ++j) {
      unsigned a[2][4], meta[2], b[4][4];
#pragma unroll
      for (int fi = 0; fi < 2; ++fi) {
        // matrix q = lane / 8 is register q: rows kc 8 (q / 2) .., outputs 8 (q % 2) ..
        honer_ldmatrix_x4_trans(
            a[fi], s_v + (j * 16 + lane / 16 * 8 + lane % 8) * L::V_ROW + wn + fi * 16
                       + lane / 8 % 2 * 8);
        const unsigned char* i = s_i + (j * 4 + 2 * (lane & 1)) * L::I_ROW + wn + fi * 16 + g;
        meta[fi] = (unsigned)i[0] | (unsigned)i[L::I_ROW] << 8 | (unsigned)i[8] << 16
                 | (unsigned)i[L::I_ROW + 8] << 24;
      }
#pragma unroll
      for (int fj = 0; fj < 4; ++fj)  // b[fj][p]: tokens x input channels 8p .. 8p + 7
        honer_ldmatrix_x4(b[fj], s_x + (wm + fj * 8 + lane % 8) * L::X_ROW + j * 32
                                     + lane / 8 * 8);
#pragma unroll
      for (int fi = 0; fi < 2; ++fi)
#pragma unroll
        for (int fj = 0; fj < 4; ++fj)
          honer_mma_sp_regs(acc[fi][fj], a[fi], b[fj], meta[fi]);
    }
  }
  honer_sparse_store<BIAS>(acc, scale, bias, y, M, N, n_tile + wn, m_tile + wm, lane);
}
"""


def fits(rows: int, in_features: int, out_features: int) -> bool:
    return in_features % STEP_K == 0 and out_features % TILE_N == 0 and rows > 0


def choose_tile(rows: int, in_features: int, out_features: int, wanted: str = "auto",
                half_values: bool = True, shared_limit: int | None = None) -> SparseTile | None:
    """The tiled kernel's block for the layer, None for the split-input-channel kernel (few
    tokens, or shapes no tile divides). `wanted` names a tile (taken where it divides the
    layer), or "auto": the first of TILES that divides the layer and gives MIN_BLOCKS
    blocks, else the first of those giving the most blocks. The pipelined tiles take half
    values only (int8 ones are converted on the way through registers), and automatically
    only where their buffers fit `shared_limit` (the dynamic shared memory a block may have
    on the GPUs built for; None: no limit)."""
    if rows < TILED_MIN_ROWS:
        return None
    usable = [t for t in TILES if out_features % t.outputs == 0
              and in_features % (32 * t.steps) == 0
              and in_features // (32 * t.steps) >= t.groups  # no idle group
              and (half_values or not t.pipeline)]
    named = [t for t in usable if t.name == wanted]
    usable = [t for t in usable
              if shared_limit is None or t.dynamic_shared_bytes <= shared_limit]
    if named or not usable:
        return named[0] if named else None

    def blocks(tile: SparseTile) -> int:
        return -(-rows // 64) * (out_features // tile.outputs)

    most = max(blocks(t) for t in usable)
    return next(t for t in usable if blocks(t) >= min(MIN_BLOCKS, most))


def on_tensor_cores(mod: tvm.IRModule, tile: str = "auto",
                    shared_limit: int | None = None) -> tvm.IRModule:
    """Every call of a `sparse_matmul` kernel whose shapes fit -> a tensor-core kernel; float
    values are cast to half where they are read, so the artifact stores them in half (see
    gpu._half_params). `tile` is the tiled kernel's block (TILE_NAMES); `shared_limit`, the
    dynamic shared memory a block may have on the GPUs built for."""
    def replacement(builder: relax.BlockBuilder, func: tvm.tirx.PrimFunc,
                    args: list[relax.Expr]):
        return _on_sparse_tensor_cores(builder, func, args, tile, shared_limit)

    return fold_bias_adds(replace_kernels(mod, KERNEL, "_tc", replacement), BIAS_FREE,
                          _with_bias)


def _with_bias(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    x, values, _, _, _ = func.params
    rows, k = (int(d) for d in x.shape)
    tile = next(t for t in TILES if t.name == func.attrs[TILE_ATTR])
    return sparse_tc_tiled_kernel(rows, k, int(values.shape[1]), str(values.dtype), tile,
                                  with_bias=True)


def called_in(cuda_source: str) -> bool:
    """Whether the kernels call DEVICE_SOURCE's functions."""
    return any(call in cuda_source
               for call in (f"{MMA_SP}(", f"{SPARSE_TILES}<", f"{SPARSE_PIPELINE}<"))


def _on_sparse_tensor_cores(builder: relax.BlockBuilder, func: tvm.tirx.PrimFunc,
                            args: list[relax.Expr], wanted: str, shared_limit: int | None):
    x, values, _, _, _ = func.params
    rows, k = (int(d) for d in x.shape)
    n, dtype = int(values.shape[1]), str(values.dtype)
    if not fits(rows, k, n):
        return None
    if dtype == "float32":
        args[1] = builder.emit(astype(args[1], "float16"))
        dtype = "float16"
    tile = choose_tile(rows, k, n, wanted, dtype == "float16", shared_limit)
    if tile is None:
        return sparse_tc_kernel(rows, k, n, dtype), args
    args[0] = builder.emit(astype(args[0], "float16"))  # read by every block of its rows
    return sparse_tc_tiled_kernel(rows, k, n, dtype, tile), args


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
                           values_dtype: str, tile: SparseTile,
                           with_bias: bool = False) -> tvm.tirx.PrimFunc:
    """The same product as `sparse_tc_kernel` with x in half, for many tokens: blocks of
    `tile`, the body in the device function `honer_sparse_tiles` (DEVICE_SOURCE); `with_bias`,
    a fifth parameter, the bias [N], is added to y."""
    from tvm.script import tirx as T

    K, N, M = in_features, out_features, rows  # noqa: N806 - the matrix names
    adds_bias = str(with_bias).lower()  # the template argument
    body = (f"{SPARSE_PIPELINE}<{tile.warps_n}, {tile.steps}, {tile.pipeline}, {adds_bias}>"
            if tile.pipeline else
            f"{SPARSE_TILES}<{tile.warps_n}, {tile.steps}, {tile.groups}, {tile.buffers}, "
            f"{adds_bias}>")
    attrs = {"tir.noalias": True, "tir.is_scheduled": True, "op_pattern": 8,
             BIAS_FREE: not with_bias, TILE_ATTR: tile.name}

    @T.macro
    def launch(x, values, index, scale, bias, y):
        T.func_attr(attrs)
        # the blocks that share a weight tile run together, so that it is read from memory
        # once while the weights exceed the L2 cache (8192 x 8192 at 256 tokens on an H200:
        # 0.180 -> 0.170 ms)
        bm = T.launch_thread("blockIdx.x", (M + 63) // 64)
        bn = T.launch_thread("blockIdx.y", N // tile.outputs)
        warp = T.launch_thread("threadIdx.y", tile.warps)
        lane = T.launch_thread("threadIdx.x", 32)
        if tile.pipeline > 0:  # (a Python bool: decided as the kernel is written)
            smem = T.alloc_buffer((tile.dynamic_shared_bytes,), "uint8", scope="shared.dyn")
            T.evaluate(T.call_extern("void", body, x, values, index, scale, bias, y, smem.data,
                                     M, K, N, bn, bm, warp, lane))
        else:
            T.evaluate(T.call_extern("void", body, x, values, index, scale, bias, y, M, K, N,
                                     bn, bm, warp, lane))

    @T.prim_func(private=True)
    def biased(x: T.Buffer((M, K), "float16"), values: T.Buffer((K // 2, N), values_dtype),
               index: T.Buffer((K // 8, N), "uint8"), scale: T.Buffer((1, N), "float32"),
               bias: T.Buffer((N,), "float32"), y: T.Buffer((M, N), "float32")):
        launch(x.data, values.data, index.data, scale.data, bias.data, y.data)

    @T.prim_func(private=True)
    def unbiased(x: T.Buffer((M, K), "float16"), values: T.Buffer((K // 2, N), values_dtype),
                 index: T.Buffer((K // 8, N), "uint8"), scale: T.Buffer((1, N), "float32"),
                 y: T.Buffer((M, N), "float32")):
        launch(x.data, values.data, index.data, scale.data, scale.data, y.data)  # bias unread

    return biased if with_bias else unbiased
