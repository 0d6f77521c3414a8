"""honer's hand-written CUDA kernels (2:4 sparse on mma.sp, W8A8 on int8 mma), run on the CPU by a
warp emulator (warp_emulator.h: every lane a thread, each mma computed from the PTX ISA's
fragment layouts), against numpy. This checks the kernels' indexing (fragments, metadata,
tiles, edges) without a GPU; the GPU check (benchmarks/gpu_check.py) runs them for real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from honer.codegen import int8_tc, sparse_tc
from honer.ir.ops import compress_24
from honer.passes import sparse24

HERE = Path(__file__).parent

DRIVER = r"""
#include "warp_emulator.h"
{sources}
#include <cstdio>
#include <string>
#include <type_traits>

template <int WN_, int KS_, int G_, int B_, int P_>  // a tile of sparse_tc.TILES
struct Shape {{ static constexpr int WN = WN_, KS = KS_, G = G_, B = B_, P = P_; }};

// a block of a pipelined tile, which takes half values only
template <int WN, int KS, int P>
void pipeline(const __half* x, const __half* values, const unsigned char* index,
              const float* scale, const float* bias, float* y, unsigned char* smem, int M,
              int K, int N, int bn, int bm, int w, int l) {{
  honer_sparse_pipeline<WN, KS, P, true>(x, values, index, scale, bias, y, smem, M, K, N, bn,
                                         bm, w, l);
}}
template <int WN, int KS, int P>
void pipeline(const __half*, const signed char*, const unsigned char*, const float*,
              const float*, float*, unsigned char*, int, int, int, int, int, int, int) {{
  std::exit(5);
}}

template <typename T>
std::vector<T> load(const std::string& path, size_t n) {{
  std::vector<T> v(n);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), sizeof(T), n, f) != n) std::exit(2);
  std::fclose(f);
  return v;
}}

int main(int argc, char** argv) {{
  const std::string kind = argv[1], dir = argv[2];
  const int M = std::stoi(argv[3]), K = std::stoi(argv[4]), N = std::stoi(argv[5]);
  const int side = std::stoi(argv[6]), padded = std::stoi(argv[7]), block = side * 32;
  emu::land_at_issue = argc > 8 && std::string(argv[8]) == "land_at_issue";
  std::vector<float> y((size_t)M * N, -1.f);
  if (kind == "int8") {{
    auto xq = load<unsigned char>(dir + "/a", (size_t)padded * K);
    auto q = load<signed char>(dir + "/b", (size_t)N * K);
    auto scale = load<float>(dir + "/scale", N), offset = load<float>(dir + "/offset", N);
    emu::launch((M + block - 1) / block, (N + block - 1) / block, side * side,
                [&](int bm, int bn, int w, int l) {{
                  honer_int8_tiles(xq.data(), q.data(), scale.data(), offset.data(), y.data(),
                                   padded, M, K, N, side, bm, bn, w, l);
                }});
  }} else {{
    auto x = load<__half>(dir + "/a", (size_t)M * K);
    auto index = load<unsigned char>(dir + "/index", (size_t)K / 8 * N);
    auto scale = load<float>(dir + "/scale", N), bias = load<float>(dir + "/bias", N);
    // (both kinds would only double the runs; the pipelined tiles take half values only)
    const bool with_bias = kind == "sparse_int8";
    // side: the index of the tile in sparse_tc.TILES (TILE_CASES); padded: its dynamic
    // shared memory as sparse_tc counts it
    auto run = [&](auto values) {{
      auto tiles = [&](auto shape) {{
        using S = decltype(shape);
        constexpr int WN = S::WN, KS = S::KS, G = S::G, B = S::B, P = S::P;
        std::vector<unsigned char> smem;
        if constexpr (P > 0)
          if (padded != honer_sparse_pipeline_bytes<WN, KS, P>()) std::exit(4);
        // NaN halves wherever a copy is missing, block by block
        auto fresh = [&] {{ smem.assign(padded, 0xff); }};
        emu::launch((M + 63) / 64, N / (32 * WN), 2 * WN * G,
                    [&](int bm, int bn, int w, int l) {{
          if constexpr (P > 0) {{
            pipeline<WN, KS, P>(x.data(), values.data(), index.data(), scale.data(),
                                bias.data(), y.data(), smem.data(), M, K, N, bn, bm, w, l);
          }} else if (with_bias)
            honer_sparse_tiles<WN, KS, G, B, true>(x.data(), values.data(), index.data(),
                                                       scale.data(), bias.data(), y.data(), M,
                                                       K, N, bn, bm, w, l);
          else
            honer_sparse_tiles<WN, KS, G, B, false>(x.data(), values.data(),
                                                        index.data(), scale.data(), nullptr,
                                                        y.data(), M, K, N, bn, bm, w, l);
        }}, fresh);
      }};
      switch (side) {{
{tile_cases}
        default: std::exit(3);
      }}
    }};
    if (kind == "sparse_half") run(load<__half>(dir + "/b", (size_t)K / 2 * N));
    else run(load<signed char>(dir + "/b", (size_t)K / 2 * N));
  }}
  std::fwrite(y.data(), sizeof(float), y.size(), stdout);
}}
"""


# the driver's instance of the tiled kernel for each of sparse_tc.TILES, by index
TILE_CASES = "\n".join(
    f"        case {i}: tiles(Shape<{t.warps_n}, {t.steps}, {t.groups}, {t.buffers}, "
    f"{t.pipeline}>{{}}); break;"
    for i, t in enumerate(sparse_tc.TILES))


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ not installed")
    work = tmp_path_factory.mktemp("warp_emulator")
    source = work / "driver.cpp"
    source.write_text(DRIVER.format(sources=sparse_tc.DEVICE_SOURCE + int8_tc.DEVICE_SOURCE,
                                    tile_cases=TILE_CASES))
    binary = work / "driver"
    built = subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", f"-I{HERE}", "-o",
                            str(binary), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    return binary


def _run(binary: Path, kind: str, work: Path, arrays: dict[str, np.ndarray],
         m: int, k: int, n: int, side: int, padded: int = 0,
         landing: str = "land_at_wait") -> np.ndarray:
    for name, a in arrays.items():
        np.ascontiguousarray(a).tofile(work / name)
    out = subprocess.run([str(binary), kind, str(work), str(m), str(k), str(n), str(side),
                          str(padded or m), landing], check=True, capture_output=True)
    return np.frombuffer(out.stdout, np.float32).reshape(m, n)


@pytest.mark.parametrize("side", [1, 2])
def test_int8_tiles_are_the_integer_product(emulator, tmp_path, side):
    """Rows and channels that do not fill a tile (70 of 72 padded rows, 80 channels)."""
    rng = np.random.default_rng(side)
    rows, padded, k, n = 70, 72, 96, 80
    xq = rng.integers(0, 256, (padded, k), dtype=np.uint8)
    q = rng.integers(-128, 128, (n, k), dtype=np.int8)
    scale = rng.uniform(1e-4, 1e-3, n).astype(np.float32)
    offset = rng.standard_normal(n).astype(np.float32)
    got = _run(emulator, "int8", tmp_path, {"a": xq, "b": q, "scale": scale, "offset": offset},
               rows, k, n, side, padded)
    sums = xq[:rows].astype(np.int64) @ q.T.astype(np.int64)
    want = sums.astype(np.float32) * scale + offset
    np.testing.assert_array_equal(got, want)


def _tile_runs():
    """(tile, int8 values, stages, cp.async landing) for each run of the tiled kernel."""
    for t in sparse_tc.TILES:
        if not t.pipeline:
            yield from ((t, int8, None, "land_at_wait") for int8 in (False, True))
            continue  # the pipelined tiles take half values
        yield t, False, 2 * t.pipeline + 1, "land_at_wait"  # twice round the buffers
        yield t, False, 2 * t.pipeline + 1, "land_at_issue"
        yield t, False, 1, "land_at_wait"  # fewer stages than the pipeline holds


@pytest.mark.parametrize(("tile", "int8_values", "stages", "landing"), [
    pytest.param(*run, id="-".join(map(str, [run[0].name, "int8" if run[1] else "half",
                                             *run[2:]])))
    for run in _tile_runs()])
def test_sparse_tiles_are_the_pruned_product(emulator, tmp_path, tile, int8_values, stages,
                                             landing):
    """The tiled mma.sp kernel in each of its block shapes: 70 tokens (a partial tile), 160,
    192 or 384 input channels (five or three stages, through both shared-memory buffers or
    through the one buffer, or split 3 + 2 between two groups of warps), 256 outputs (two or
    four tiles); values in half, or int8 with a scale per output and a bias. The pipelined
    tiles (half values, with a bias) run `stages` stages, their copies landing as late or as
    early as a GPU may land them (warp_emulator.h)."""
    rng = np.random.default_rng(int8_values)
    m, k, n = 70, {1: 160, 2: 192, 4: 384}[tile.steps], 256  # 160: a split of 3 and 2 stages
    if tile.pipeline:
        k = 32 * tile.steps * stages
    x = rng.standard_normal((m, k)).astype(np.float16)
    dense = sparse24.prune_24(rng.standard_normal((n, k)).astype(np.float32))
    values, index = compress_24(dense)  # [n, k/2], [n, k/8]
    scale, bias = np.ones(n, np.float32), np.zeros(n, np.float32)
    if int8_values or tile.pipeline:
        bias = rng.standard_normal(n).astype(np.float32)
    if int8_values:
        values, scale = sparse24.int8_rows(values)
        stored = values.T
    else:
        stored = values.T.astype(np.float16)
    got = _run(emulator, "sparse_int8" if int8_values else "sparse_half", tmp_path,
               {"a": x, "b": stored, "index": index.T, "scale": scale.astype(np.float32),
                "bias": bias}, m, k, n,
               side=sparse_tc.TILES.index(tile), padded=tile.dynamic_shared_bytes,
               landing=landing)
    kept = _decompress(stored.T.astype(np.float64), index, k)
    want = x.astype(np.float64) @ kept.T * scale.reshape(-1) + bias
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


def _decompress(values: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """[n, k/2] kept values and their positions -> [n, k], written out from the format's
    definition (ir.ops.compress_24): byte j of a row holds groups 2j and 2j + 1 in its low and
    high nibble, each nibble the two kept positions, the first in its low two bits."""
    n = values.shape[0]
    dense = np.zeros((n, k))
    for row in range(n):
        for c in range(k // 2):
            group = c // 2
            nibble = (int(index[row, group // 2]) >> (4 * (group % 2))) & 15
            position = (nibble >> (2 * (c % 2))) & 3
            dense[row, 4 * group + position] = values[row, c]
    return dense


def test_gpu_bundle_inputs_are_made_again_bit_for_bit(tmp_path):
    """The GPU bundle carries a case's integer inputs and remakes its float ones on the GPU
    machine (benchmarks/gpu_check.reproducible): pinned values, so a change of the recipe
    cannot pass unnoticed, and the saved/loaded round trip."""
    from honer.benchmarks import gpu_check

    np.testing.assert_array_equal(gpu_check.reproducible((4,), 0),
                                  np.float32([-2.0, -0.6473336, 1.4347057, -1.5261617]))
    for case in ({"model": "bert_minilm", "kwargs": {"batch": 1}},  # token ids, mask
                 {"model": "vit_deit_tiny", "kwargs": {"batch": 1}}):  # an image
        _, inputs = gpu_check.make_model(case["model"], case["kwargs"])
        saved = tmp_path / case["model"]
        saved.mkdir()
        gpu_check.saved_inputs(saved, inputs)
        _, made = gpu_check.make_model(case["model"], case["kwargs"])  # as on a GPU machine
        again = gpu_check.load_inputs(saved, made)
        assert len(again) == len(inputs)
        for a, x in zip(again, inputs):
            np.testing.assert_array_equal(a, x.numpy())
            assert a.dtype == x.numpy().dtype
