"""The standalone form's build, shared by the CPU targets: TVM kernels in one object file, the
model's call list and memory plan as C (codegen.aot), honer's C runtime, linked by a C compiler
into a shared library (`honer_run`, loaded through ctypes) and, for machines other than this
one, a command-line driver the loader runs (under an emulator where one is named)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..codegen import aot
from ..codegen.build import build_kernels_object, plan_static
from ..codegen.cpu_schedule import CPUScheduleConfig, ScheduleStats
from ..codegen.relax_lower import LoweredModule
from ..codegen.tuning import TunedKernels
from ..errors import BuildError
from .base import BuildOutput

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
RUNTIME_SOURCES = ("honer_rt.c",)
LIBRARY = "model.so"
DRIVER = "honer_main"
HEADERS = ("model.h", "honer_rt.h")
API = ("honer_run", "honer_model", "honer_last_error", "honer_set_num_threads",
       "honer_num_threads")
# the kernels' and the runtime's own symbols stay inside the library
EXPORTS = "{ global: " + " ".join(f"{name};" for name in API) + " local: *; };\n"


@dataclass(frozen=True)
class CToolchain:
    cc: str  # the C compiler (and linker driver) for the target machine
    machine: str  # platform.machine() of the machines the code runs on
    flags: tuple[str, ...] = ("-O2",)
    emulator: tuple[str, ...] = ()  # how to run the driver on another machine (recorded)
    driver: bool = False  # also build the command-line driver (the runner of emulated targets)


def build_standalone(lowered: LoweredModule, tvm_target: dict[str, Any],
                     schedule: CPUScheduleConfig, stats: ScheduleStats,
                     tuned: TunedKernels | None, cc: CToolchain, out_dir: Path,
                     workdir: Path) -> BuildOutput:
    mod = plan_static(lowered, tvm_target, schedule, stats, tuned)
    plan = aot.plan(mod, num_inputs=len(lowered.mod["main"].params) - len(lowered.params))
    src = workdir / "standalone"
    src.mkdir(parents=True, exist_ok=True)
    build_kernels_object(mod, tvm_target, src / "kernels.o")
    (src / "model.c").write_text(aot.emit_c(plan))
    (out_dir / "model.h").write_text(aot.emit_header(plan))
    shutil.copy(RUNTIME_DIR / "honer_rt.h", out_dir / "honer_rt.h")
    (src / "exports.map").write_text(EXPORTS)
    compile_flags = [*cc.flags, "-std=c11", "-fPIC", "-fvisibility=hidden", "-Wall",
                     f"-I{out_dir}"]
    objects = {"runtime": src / "honer_rt.o", "model": src / "model.o"}
    _run(cc.cc, [*compile_flags, "-c", str(RUNTIME_DIR / "honer_rt.c"), "-o",
                 str(objects["runtime"])], workdir)
    _run(cc.cc, [*compile_flags, "-c", str(src / "model.c"), "-o", str(objects["model"])],
         workdir)
    linked = [str(objects["model"]), str(objects["runtime"]), str(src / "kernels.o")]
    _run(cc.cc, ["-shared", "-o", str(out_dir / LIBRARY), *linked, "-lm", "-lpthread",
                 f"-Wl,--version-script={src / 'exports.map'}"], workdir)
    files = [LIBRARY, *HEADERS]
    if cc.driver:
        _run(cc.cc, [*compile_flags, "-o", str(out_dir / DRIVER),
                     str(RUNTIME_DIR / "honer_main.c"), *linked, "-lm", "-lpthread"], workdir)
        files.append(DRIVER)
    sizes = {"runtime_code": text_bytes(objects["runtime"]),
             "model_tables": text_bytes(objects["model"], data=True),
             "kernel_code": text_bytes(src / "kernels.o"),
             "weights": sum(n for _, n in plan.weights),
             "constants": len(plan.consts),
             "library_file": (out_dir / LIBRARY).stat().st_size}
    return BuildOutput(
        files=files, form="aot-exec" if cc.driver else "aot-shared",
        manifest={"library": LIBRARY, "device": "cpu",
                  "aot": {"machine": cc.machine, "arena_bytes": plan.arena_bytes,
                          "weights": [list(w) for w in plan.weights],
                          **({"executable": DRIVER, "emulator": list(cc.emulator)}
                             if cc.driver else {})}},
        report={"schedule": schedule_report(schedule, stats), "aot": plan.to_json(),
                "sizes": sizes, "compiler": cc.cc})


def schedule_report(schedule: CPUScheduleConfig, stats: ScheduleStats) -> dict[str, Any]:
    return {"lanes": schedule.lanes, "contractions": stats.contractions,
            "reductions": stats.reductions, "elementwise": stats.elementwise,
            "tuned": stats.tuned, "serial": stats.serial, "fallbacks": stats.fallbacks}


def _run(cc: str, args: list[str], workdir: Path) -> None:
    cmd = [cc, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = workdir / "standalone_build.log"
    with open(log, "a") as f:
        f.write(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}:\n"
                         + "\n".join(proc.stderr.strip().splitlines()[-15:]))


def text_bytes(obj: Path, data: bool = False) -> int:
    """Bytes of an ELF64 object's code sections (with `data`, its allocated data too): what
    the code costs in memory, without symbol tables and relocations."""
    raw = obj.read_bytes()
    if raw[:4] != b"\x7fELF" or raw[4] != 2:  # not ELF64: the file size is the best guess
        return len(raw)
    shoff, = struct.unpack_from("<Q", raw, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", raw, 0x3A)
    total = 0
    for i in range(shnum):
        flags, = struct.unpack_from("<Q", raw, shoff + i * shentsize + 8)
        size, = struct.unpack_from("<Q", raw, shoff + i * shentsize + 32)
        alloc, execute = flags & 0x2, flags & 0x4
        if execute or (data and alloc):
            total += size
    return total
