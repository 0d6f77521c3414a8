// Runs honer's hand-written CUDA device functions (codegen/sparse_tc.py, codegen/int8_tc.py) on
// a CPU, so their indexing is tested where there is no GPU. Each thread of a block is a thread,
// the block's threads run together (blocks one after another, so `__shared__` arrays are
// function statics); __syncthreads is a barrier of the block. A warp-wide mma is a barrier of
// the warp at which every lane leaves its fragment registers, after which each lane computes
// its own accumulator elements from all lanes' registers by the PTX ISA's fragment layouts,
// written out here independently of the kernels; then a second barrier.
#pragma once
#define HONER_WARP_EMULATOR
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __syncthreads() emu::block_barrier->arrive_and_wait()
using std::min;

typedef _Float16 __half;
struct __half2 { _Float16 x, y; };
struct float2 { float x, y; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return {(_Float16)a, (_Float16)b}; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half __int2half_rn(int v) { return (_Float16)v; }
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }

namespace emu {
constexpr int MAX_WARPS = 32;
inline thread_local int lane, warp;
inline std::barrier<>* block_barrier;
inline std::barrier<>* warp_barriers[MAX_WARPS];
inline unsigned A[MAX_WARPS][32][4], B[MAX_WARPS][32][4], meta[MAX_WARPS][32];
inline const void* rows[MAX_WARPS][32];
// cp.async: a copy reads its source when issued and lands when a wait retires its group,
// or at once with land_at_issue (the two ends of when a GPU may land it: the first catches
// reads before the wait, the second a buffer overwritten while other warps still read it)
inline bool land_at_issue = false;
struct Copy { void* dst; unsigned char bytes[16]; };
inline thread_local std::vector<Copy> open_group;
inline thread_local std::deque<std::vector<Copy>> in_flight;

inline void leave_registers(const unsigned* a, int na, const unsigned* b, int nb, unsigned m) {
  std::memcpy(A[warp][lane], a, 4 * na);
  std::memcpy(B[warp][lane], b, 4 * nb);
  meta[warp][lane] = m;
  warp_barriers[warp]->arrive_and_wait();
}

inline void warp_done() { warp_barriers[warp]->arrive_and_wait(); }

inline unsigned byte_of(unsigned word, int j) { return (word >> (8 * j)) & 255u; }

inline float half_of(unsigned word, int j) {
  _Float16 h[2];
  std::memcpy(h, &word, 4);
  return (float)h[j];
}

inline void check_aligned(const void* p) {  // cp.async and ldmatrix addresses: 16 bytes
  if (reinterpret_cast<std::uintptr_t>(p) % 16) std::abort();
}

// an ldmatrix's row address from every lane of the warp (emu::rows)
inline void share_row(const void* row) {
  check_aligned(row);
  rows[warp][lane] = row;
  warp_barriers[warp]->arrive_and_wait();
}

// body(block_x, block_y, warp, lane) for every lane of every warp of every block, after
// before_block()
template <typename Body, typename Before = void (*)()>
void launch(int blocks_x, int blocks_y, int warps, Body body, Before before_block = [] {}) {
  for (int by = 0; by < blocks_y; ++by)
    for (int bx = 0; bx < blocks_x; ++bx) {
      before_block();
      std::barrier<> block(32 * warps);
      std::vector<std::unique_ptr<std::barrier<>>> per_warp;
      block_barrier = &block;
      for (int w = 0; w < warps; ++w) {
        per_warp.push_back(std::make_unique<std::barrier<>>(32));
        warp_barriers[w] = per_warp.back().get();
      }
      std::vector<std::thread> threads;
      for (int w = 0; w < warps; ++w)
        for (int l = 0; l < 32; ++l)
          threads.emplace_back([&, w, l] { warp = w; lane = l; body(bx, by, w, l); });
      for (auto& t : threads) t.join();
    }
}
}  // namespace emu

// mma.sync.m16n8k32.row.col.s32.u8.s8.s32; lane = 4 g + t
// A 16 x 32 uint8: register r, byte j of lane (g, t) is row g + 8 (r % 2), column 16 (r / 2) + 4 t + j
// B 32 x 8 int8: register r, byte j is row 16 r + 4 t + j, column g
// C 16 x 8 int32: element i is row g + 8 (i / 2), column 2 t + i % 2
inline void honer_mma_u8s8(int* acc, const unsigned* a, const unsigned* b) {
  emu::leave_registers(a, 4, b, 2, 0);
  int Am[16][32], Bm[32][8];
  const auto& regs_a = emu::A[emu::warp];
  const auto& regs_b = emu::B[emu::warp];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r)
      for (int j = 0; j < 4; ++j)
        Am[g + 8 * (r % 2)][16 * (r / 2) + 4 * t + j] = (int)emu::byte_of(regs_a[l][r], j);
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 4; ++j)
        Bm[16 * r + 4 * t + j][g] = (int)(signed char)emu::byte_of(regs_b[l][r], j);
  }
  const int g = emu::lane / 4, t = emu::lane % 4;
  for (int i = 0; i < 4; ++i)
    for (int k = 0; k < 32; ++k) acc[i] += Am[g + 8 * (i / 2)][k] * Bm[k][2 * t + i % 2];
  emu::warp_done();
}

// mma.sp::ordered_metadata.sync.m16n8k32.row.col.f32.f16.f16.f32, sparsity selector 0
// A 16 x 32 2:4-sparse, given as 16 x 16 kept halves: element i (half i % 2 of register i / 2)
// of lane (g, t) is row (i % 4) / 2 * 8 + g, kept column c = i / 4 * 8 + 2 t + i % 2.
// Metadata: lane (g, h) for h = 0, 1 gives kept columns 8 h .. 8 h + 7 (input channels
// 16 h .. 16 h + 15), bits 0-15 for row g and 16-31 for row g + 8, two bits per kept column
// in order: its position within its group of four.
// B 32 x 8 halves: element i is row i / 2 * 8 + 2 t + i % 2, column g
// C 16 x 8 floats: element i is row i / 2 * 8 + g, column 2 t + i % 2
inline void honer_mma_sp_regs(float* acc, const unsigned* a, const unsigned* b, unsigned m) {
  emu::leave_registers(a, 4, b, 4, m);
  float Ad[16][32] = {}, Bm[32][8];
  const auto& regs_a = emu::A[emu::warp];
  const auto& regs_b = emu::B[emu::warp];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i % 4) / 2 * 8 + g, c = i / 4 * 8 + 2 * t + i % 2;
      const int h = c / 8, cc = c % 8;
      const unsigned word = emu::meta[emu::warp][4 * g + h];
      const int position = (word >> (16 * (row >= 8) + 2 * cc)) & 3;
      Ad[row][(4 * h + cc / 2) * 4 + position] = emu::half_of(regs_a[l][i / 2], i % 2);
      Bm[i / 2 * 8 + 2 * t + i % 2][g] = emu::half_of(regs_b[l][i / 2], i % 2);
    }
  }
  const int g = emu::lane / 4, t = emu::lane % 4;
  for (int i = 0; i < 4; ++i)
    for (int k = 0; k < 32; ++k) acc[i] += Ad[i / 2 * 8 + g][k] * Bm[k][2 * t + i % 2];
  emu::warp_done();
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l gives the address of row l % 8 of matrix
// l / 8; lane (g, t) receives in r[j] the halves at columns 2 t, 2 t + 1 of row g of matrix j
inline void honer_ldmatrix_x4(unsigned* r, const void* row) {
  emu::share_row(row);
  const int g = emu::lane / 4, t = emu::lane % 4;
  for (int j = 0; j < 4; ++j)
    std::memcpy(&r[j], static_cast<const char*>(emu::rows[emu::warp][8 * j + g]) + 4 * t, 4);
  emu::warp_done();
}

// the same, .trans: lane (g, t) receives in r[j] the halves at column g of rows 2 t, 2 t + 1
inline void honer_ldmatrix_x4_trans(unsigned* r, const void* row) {
  emu::share_row(row);
  const int g = emu::lane / 4, t = emu::lane % 4;
  for (int j = 0; j < 4; ++j)
    for (int h = 0; h < 2; ++h)
      std::memcpy(reinterpret_cast<char*>(&r[j]) + 2 * h,
                  static_cast<const char*>(emu::rows[emu::warp][8 * j + 2 * t + h]) + 2 * g, 2);
  emu::warp_done();
}

// cp.async.cg.shared.global, 16 bytes (zeros when src_bytes is 0), and its groups: the data
// lands only when a wait retires the group, so a read before its wait sees the old contents
inline void honer_cp_async16(void* dst, const void* src, int src_bytes) {
  emu::check_aligned(dst);
  emu::check_aligned(src);
  emu::Copy copy{dst, {}};
  if (src_bytes) std::memcpy(copy.bytes, src, 16);
  if (emu::land_at_issue)
    std::memcpy(dst, copy.bytes, 16);
  else
    emu::open_group.push_back(copy);
}
inline void honer_cp_async_commit() {
  emu::in_flight.push_back(std::move(emu::open_group));
  emu::open_group.clear();
}
template <int N>
inline void honer_cp_async_wait() {
  while (emu::in_flight.size() > N) {
    for (const auto& copy : emu::in_flight.front()) std::memcpy(copy.dst, copy.bytes, 16);
    emu::in_flight.pop_front();
  }
}
