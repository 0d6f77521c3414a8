"""The host CPU: LLVM for this machine's own CPU, run in-process through TVM's Relax VM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tvm.target import codegen as llvm_info

from ..codegen.build import build_relax, export_library
from ..codegen.cpu_schedule import CPUScheduleConfig, ScheduleStats
from ..codegen.relax_lower import LoweredModule
from .base import BuildOutput, Target, Tool

LIBRARY = "model.so"


class HostTarget(Target):
    name = "host"
    description = "this machine's CPU (LLVM, native CPU features), Relax VM runtime"
    tools = (Tool("g++", "install the system C++ compiler: apt-get install g++"),)

    def tvm_target(self) -> dict[str, Any]:
        # The CPU model LLVM detects here decides the vector width (AVX2/AVX-512/NEON).
        return {"kind": "llvm", "mcpu": llvm_info.llvm_get_system_cpu()}

    def schedule(self) -> CPUScheduleConfig:
        import tvm

        # float32 lanes from the CPU's features (LLVM's "vector width" reports 512 bits for
        # AVX2-only parts, which would make every vector two registers wide)
        target = tvm.target.Target(self.tvm_target())
        for feature, lanes in (("avx512f", 16), ("avx2", 8), ("avx", 8), ("neon", 4)):
            if llvm_info.llvm_cpu_has_features([feature], target):
                return CPUScheduleConfig(lanes=lanes)
        return CPUScheduleConfig(lanes=4)

    def build(self, lowered: LoweredModule, out_dir: Path, workdir: Path) -> BuildOutput:
        stats = ScheduleStats()
        executable = build_relax(lowered, self.tvm_target(), self.schedule(), stats)
        export_library(executable, out_dir / LIBRARY, workdir)
        return BuildOutput(files=[LIBRARY], form="relax-vm",
                           manifest={"library": LIBRARY, "device": "cpu"},
                           report={"schedule": {"lanes": self.schedule().lanes,
                                                "contractions": stats.contractions,
                                                "reductions": stats.reductions,
                                                "elementwise": stats.elementwise,
                                                "serial": stats.serial,
                                                "fallbacks": stats.fallbacks}})
