"""The host CPU: LLVM for this machine's own CPU, run in-process through TVM's Relax VM
(form=vm, the default) or as a standalone library with honer's C runtime (form=standalone)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tvm.target import codegen as llvm_info

from ..codegen.build import build_relax, export_library, launches_through_hook, tune_cpu
from ..codegen.cpu_schedule import CPUScheduleConfig, ScheduleStats
from ..codegen.int8_dot import best_intrinsic
from ..codegen.relax_lower import LoweredModule
from ..codegen.tuning import TuneConfig, TunedKernels, TuningDatabase
from ..errors import HonerError
from ..runtime.cpu import X86_FEATURES, cpu_flags
from .base import FLOAT_FREEDOMS, BuildOutput, CPUTarget, Tool
from .standalone import RUNTIME_DIR, CToolchain, build_standalone, compile_c, schedule_report

LIBRARY = "model.so"
FORMS = ("vm", "standalone")
HOST_CC = CToolchain("gcc", platform.machine(), ("-O2",))  # the C compiler for this machine


class HostTarget(CPUTarget):
    name = "host"
    description = ("this machine's CPU (LLVM, native CPU features); option form=vm (Relax VM "
                   "runtime, the default) or form=standalone (C runtime, no TVM to run it)")
    tools = (Tool("g++", "install the system C++ compiler: apt-get install g++"),
             Tool("gcc", "install the system C compiler: apt-get install gcc"))
    tunable = True

    def __init__(self, form: str = "vm", mcpu: str | None = None):
        if form not in FORMS:
            raise HonerError(f"target host: form={form!r}; choose one of {', '.join(FORMS)}")
        self.form = form
        self.mcpu = mcpu  # another x86 CPU to build for (LLVM's name), e.g. icelake-server
        if mcpu is not None:
            self._check_mcpu(mcpu)

    @classmethod
    def from_options(cls, options: dict[str, str]) -> HostTarget:
        unknown = sorted(set(options) - {"form", "mcpu"})
        if unknown:
            raise HonerError(f"target host: unknown option(s) {unknown}; it takes ['form', "
                             "'mcpu']")
        return cls(**options)

    @staticmethod
    def _check_mcpu(mcpu: str) -> None:
        import tvm

        # LLVM quietly builds for "generic" when it does not know a CPU: refuse instead
        known = set(llvm_info.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"})))
        if mcpu not in known:
            raise HonerError(f"target host: mcpu={mcpu!r} is not a CPU LLVM knows for this "
                             "machine's architecture (x86-64: e.g. znver4, sapphirerapids, "
                             "icelake-server, x86-64-v3)")

    def cpu_features(self) -> list[str]:
        """The vector features the kernels may use: a CPU without one cannot run them."""
        import tvm

        target = tvm.target.Target(self.tvm_target())
        return [f for f in X86_FEATURES if llvm_info.llvm_cpu_has_features([f], target)]

    def can_run_here(self) -> bool:
        return not set(self.cpu_features()) - set(cpu_flags() or self.cpu_features())

    def tvm_target(self) -> dict[str, Any]:
        # The CPU model LLVM detects here decides the vector width (AVX2/AVX-512/NEON).
        # num-cores: MetaSchedule sizes parallel loops by it (and refuses CPU targets without)
        return {"kind": "llvm", "mcpu": self.mcpu or llvm_info.llvm_get_system_cpu(),
                "num-cores": len(os.sched_getaffinity(0)), **FLOAT_FREEDOMS}


    def schedule(self) -> CPUScheduleConfig:
        import tvm

        # float32 lanes from the CPU's features (LLVM's "vector width" reports 512 bits for
        # AVX2-only parts, which would make every vector two registers wide)
        target = tvm.target.Target(self.tvm_target())

        def has(feature: str) -> bool:
            return bool(llvm_info.llvm_cpu_has_features([feature], target))

        int8_dot = best_intrinsic(has)
        for feature, lanes, registers in (("avx512f", 16, 32), ("avx2", 8, 16), ("avx", 8, 16),
                                          ("neon", 4, 32)):
            if has(feature):
                return CPUScheduleConfig(lanes=lanes, int8_dot=int8_dot,
                                         vector_registers=registers)
        return CPUScheduleConfig(lanes=4, int8_dot=int8_dot)

    def tune(self, lowered: LoweredModule, cfg: TuneConfig,
             progress: Callable[[str], None]) -> dict[str, Any]:
        return tune_cpu(lowered, self.tvm_target(), self.schedule(), cfg, progress).to_json()

    def build(self, lowered: LoweredModule, out_dir: Path, workdir: Path,
              tuning: TuneConfig | None = None) -> BuildOutput:
        import tvm

        stats = ScheduleStats()
        tuned = TunedKernels(TuningDatabase(tuning.database),
                             tvm.target.Target(self.tvm_target())) if tuning else None
        if self.form == "standalone":
            built = build_standalone(lowered, self.tvm_target(), self.schedule(), stats, tuned,
                                     HOST_CC, out_dir, workdir)
            built.manifest["cpu_features"] = self.cpu_features()
            return built
        executable = build_relax(lowered, self.tvm_target(), self.schedule(), stats, tuned)
        # honer's thread pool linked in, for the loader to run the parallel loops on in place
        # of TVM's (runtime/honer_pool.c says why)
        pool = () if not launches_through_hook(executable) else (
            compile_c(HOST_CC.cc, [*HOST_CC.flags, "-std=c11", "-fPIC", "-fvisibility=hidden"],
                      RUNTIME_DIR / "honer_pool.c", workdir, workdir),)
        export_library(executable, out_dir / LIBRARY, workdir, pool)
        return BuildOutput(files=[LIBRARY], form="relax-vm",
                           manifest={"library": LIBRARY, "device": "cpu",
                                     "cpu_features": self.cpu_features(),
                                     "thread_pool": "honer" if pool else "tvm"},
                           report={"schedule": schedule_report(self.schedule(), stats)})
