"""64-bit ARM Linux (aarch64, NEON): the standalone form cross-compiled with Debian's aarch64
toolchain. The artifact holds a shared library (`honer_run`) and a command-line driver; the
loader runs the driver natively on aarch64 and under qemu-aarch64 elsewhere."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

from ..codegen.cpu_schedule import CPUScheduleConfig, ScheduleStats
from ..codegen.relax_lower import LoweredModule
from ..errors import HonerError
from .base import FLOAT_FREEDOMS, BuildOutput, CPUTarget, Tool
from .standalone import CToolchain, build_standalone

CC = "aarch64-linux-gnu-gcc"
SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's aarch64 libc, which qemu's loader needs (-L)
EMULATOR = ("qemu-aarch64", "-L", SYSROOT)


class ArmTarget(CPUTarget):
    name = "arm"
    description = ("64-bit ARM Linux (aarch64, NEON), standalone form cross-compiled with "
                   f"{CC}; runs here under qemu-aarch64")
    tools = (Tool(CC, "install the aarch64 cross compiler: apt-get install gcc-aarch64-linux-gnu"),)

    def tvm_target(self) -> dict[str, Any]:
        return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
                **FLOAT_FREEDOMS}

    def schedule(self) -> CPUScheduleConfig:
        # NEON: 128-bit vectors, 4 float32 lanes, 32 registers
        return CPUScheduleConfig(lanes=4, vector_registers=32)


    def build(self, lowered: LoweredModule, out_dir: Path, workdir: Path,
              tuning: Any = None) -> BuildOutput:
        if tuning is not None:
            raise HonerError("target arm has no tuner (kernels cannot be timed here); compile "
                             "without tune=")
        toolchain = CToolchain(CC, "aarch64", ("-O2", "-march=armv8-a"), EMULATOR,
                               "qemu-aarch64 (apt-get install qemu-user)", driver=True)
        return build_standalone(lowered, self.tvm_target(), self.schedule(), ScheduleStats(),
                                None, toolchain, out_dir, workdir)

    def can_run_here(self) -> bool:
        return platform.machine() == "aarch64" or shutil.which(EMULATOR[0]) is not None
