"""NVIDIA GPUs: CUDA kernels scheduled by dlight, compiled by nvcc for every requested
architecture, run through TVM's Relax VM on the device. Builds anywhere nvcc is installed;
runs (and checks against the reference) only where a GPU is visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..codegen.build import export_library
from ..codegen.gpu import ARCH_LIMITS, PRECISIONS, GPUConfig, build_cuda, launch_report
from ..codegen.gpu_matmul import TILE_NAMES
from ..codegen.relax_lower import LoweredModule
from ..codegen.sparse_tc import TILE_NAMES as SPARSE_TILE_NAMES
from ..errors import HonerError
from .base import BuildOutput, Target, Tool

LIBRARY = "model.so"
KERNELS = "kernels.fatbin"
PRECISION_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class CudaTarget(Target):
    name = "cuda"
    description = ("NVIDIA GPUs (sm_80, sm_90 by default): dlight-scheduled CUDA kernels "
                   "compiled by nvcc, Relax VM runtime; options arch=sm_80+sm_90, "
                   "precision=fp32|fp16|bf16, graphs=on|off (CUDA graphs), "
                   "mma_tile=auto|128x128|64x128|32x64|32x32 (fp16 tensor-core tile), "
                   f"sparse_tile={'|'.join(SPARSE_TILE_NAMES)} (2:4 kernel's outputs x "
                   "tokens x channels a stage; pS: S stages in a cp.async pipeline)")
    tools = (Tool("nvcc", "install the CUDA toolkit (it provides nvcc)"),
             Tool("g++", "install the system C++ compiler: apt-get install g++"))

    def __init__(self, archs: tuple[str, ...] = GPUConfig.archs,
                 precision: str = GPUConfig.precision, graphs: bool = GPUConfig.graphs,
                 mma_tile: str = GPUConfig.mma_tile, sparse_tile: str = GPUConfig.sparse_tile):
        unknown = [a for a in archs if a not in ARCH_LIMITS]
        if unknown or not archs:
            raise HonerError(f"target cuda: unknown arch(s) {unknown}; known: "
                             f"{'+'.join(ARCH_LIMITS)}")
        precision = PRECISION_ALIASES.get(precision, precision)
        if precision not in PRECISIONS:
            raise HonerError(f"target cuda: precision {precision!r}; choose fp32, fp16 or bf16")
        if mma_tile not in TILE_NAMES:
            raise HonerError(f"target cuda: mma_tile={mma_tile!r}; choose one of "
                             f"{'|'.join(TILE_NAMES)}")
        if sparse_tile not in SPARSE_TILE_NAMES:
            raise HonerError(f"target cuda: sparse_tile={sparse_tile!r}; choose one of "
                             f"{'|'.join(SPARSE_TILE_NAMES)}")
        self.config = GPUConfig(tuple(archs), precision, graphs, mma_tile, sparse_tile)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> CudaTarget:
        known = {"arch", "precision", "graphs", "mma_tile", "sparse_tile"}
        if set(options) - known:
            raise HonerError(f"target cuda: unknown option(s) {sorted(set(options) - known)}; "
                             f"it takes {sorted(known)}")
        kwargs: dict[str, Any] = {}
        if "arch" in options:
            kwargs["archs"] = tuple(options["arch"].split("+"))
        if "precision" in options:
            kwargs["precision"] = options["precision"]
        if "graphs" in options:
            if options["graphs"] not in ("on", "off"):
                raise HonerError(f"target cuda: graphs={options['graphs']!r}; use on or off")
            kwargs["graphs"] = options["graphs"] == "on"
        for tile in ("mma_tile", "sparse_tile"):
            if tile in options:
                kwargs[tile] = options[tile]
        return cls(**kwargs)

    def lower(self, graph: Any, split: Any = None) -> Any:
        from ..codegen.relax_lower import lower

        # linear weights as [out, in]: the matmul reads both operands along the reduction
        return lower(graph, transpose_linears=False, split=split)

    def tvm_target(self) -> dict[str, Any]:
        # code is generated for the oldest arch, so one CUDA source compiles for all of them;
        # the host side is plain x86-64 (it only launches kernels)
        oldest = min(self.config.archs, key=lambda a: int(a[3:]))
        return {"kind": "cuda", "arch": oldest,
                "host": {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}}

    def build(self, lowered: LoweredModule, out_dir: Path, workdir: Path,
              tuning: Any = None) -> BuildOutput:
        if tuning is not None:
            raise HonerError("target cuda has no tuner yet; compile without tune=")
        build = build_cuda(lowered, self.tvm_target(), self.config, workdir)
        export_library(build.executable, out_dir / LIBRARY, workdir)
        (out_dir / KERNELS).write_bytes(build.fatbin)
        half = {i: self.config.precision for i in build.half_params}
        return BuildOutput(
            files=[LIBRARY, KERNELS], form="relax-vm-cuda",
            manifest={"library": LIBRARY, "device": "cuda",
                      "cuda": {"kernels": KERNELS, "archs": list(self.config.archs),
                               "precision": self.config.precision,
                               "graphs": self.config.graphs,
                               "mma_tile": self.config.mma_tile,
                               "sparse_tile": self.config.sparse_tile,
                               "dynamic_shared_bytes": max(
                                   (k.dynamic_shared_bytes for k in build.launches.values()),
                                   default=0),
                               "source_sha256": build.source_sha256}},
            report={"schedule": {"family": "dlight", "precision": self.config.precision,
                                 "archs": list(self.config.archs),
                                 "kernels": len(build.launches),
                                 "half_weights": len(half)},
                    "kernels": launch_report(build.launches)},
            weight_dtypes=half)

    def can_run_here(self) -> bool:
        try:
            import tvm

            return bool(tvm.runtime.cuda(0).exist)
        except Exception:  # no driver, no runtime: compile-only here
            return False
