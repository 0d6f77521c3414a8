"""WebAssembly (wasm32-wasi, SIMD128): the standalone form compiled by clang against wasi-libc
into model.wasm, with honer's JavaScript ES-module loader (runtime/honer.mjs) for Node.js and
browsers. One thread (no wasm threads); the loader runs it here through Node.js."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..codegen.cpu_schedule import CPUScheduleConfig, ScheduleStats
from ..codegen.relax_lower import LoweredModule
from ..errors import HonerError
from .base import FLOAT_FREEDOMS, BuildOutput, CPUTarget, Tool
from .standalone import CToolchain, build_standalone

INSTALL = "apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32"
FLAGS = ("--target=wasm32-wasi", "-O2", "-msimd128", "-DHONER_SINGLE_THREAD")


class WasmTarget(CPUTarget):
    name = "wasm"
    description = ("WebAssembly (wasm32-wasi, SIMD128): model.wasm and a JavaScript loader, "
                   "built with clang and wasi-libc; runs here in Node.js")
    tools = (Tool("clang", f"install clang and the WASI sysroot: {INSTALL}"),
             Tool("wasm-ld", f"install the WebAssembly linker: {INSTALL}"))

    def tvm_target(self) -> dict[str, Any]:
        return {"kind": "llvm", "mtriple": "wasm32-unknown-wasi", "mattr": ["+simd128"],
                **FLOAT_FREEDOMS}

    def schedule(self) -> CPUScheduleConfig:
        return CPUScheduleConfig(lanes=4)  # SIMD128: 4 float32 lanes


    def build(self, lowered: LoweredModule, out_dir: Path, workdir: Path,
              tuning: Any = None) -> BuildOutput:
        if tuning is not None:
            raise HonerError("target wasm has no tuner; compile without tune=")
        toolchain = CToolchain("clang", "wasm32", FLAGS, ("node",),
                               "Node.js (apt-get install nodejs)", wasm=True)
        return build_standalone(lowered, self.tvm_target(), self.schedule(), ScheduleStats(),
                                None, toolchain, out_dir, workdir)

    def can_run_here(self) -> bool:
        return shutil.which("node") is not None
