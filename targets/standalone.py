"""The standalone form's build, shared by the CPU targets: TVM kernels in one object file, the
model's call list and memory plan as C (codegen.aot), honer's C runtime, linked by a C compiler
into a shared library (`honer_run`, loaded through ctypes) and, for machines other than this
one, a command-line driver the loader runs (under an emulator where one is named); for wasm32,
model.wasm with a JavaScript loader and a Node.js driver."""

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
RUNTIME_SOURCES = ("honer_rt.c", "honer_pool.c")
LIBRARY = "model.so"
DRIVER = "honer_main"
WASM = "model.wasm"
NODE_DRIVER = "honer_node.mjs"
JS_FILES = ("honer.mjs", NODE_DRIVER, "honer_page.html")
HEADERS = ("model.h", "honer_rt.h")
API = ("honer_run", "honer_model", "honer_last_error", "honer_set_num_threads",
       "honer_num_threads", "honer_profile", "honer_call_name")
# the kernels' and the runtime's own symbols stay inside the library
EXPORTS = "{ global: " + " ".join(f"{name};" for name in API) + " local: *; };\n"


@dataclass(frozen=True)
class CToolchain:
    cc: str  # the C compiler (and linker driver) for the target machine
    machine: str  # platform.machine() of the machines the code runs on ("wasm32": none)
    flags: tuple[str, ...] = ("-O2",)
    emulator: tuple[str, ...] = ()  # how to run the driver on another machine (recorded)
    emulator_hint: str = ""  # how to install the emulator
    driver: bool = False  # also build the command-line driver (the runner of emulated targets)
    wasm: bool = False  # link a WebAssembly module (with the JS loader) instead of ELF files


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
    compile_flags = [*cc.flags, "-std=c11", "-fvisibility=hidden", "-Wall", f"-I{out_dir}"]
    compile_flags += [] if cc.wasm else ["-fPIC"]
    runtime = [compile_c(cc.cc, compile_flags, RUNTIME_DIR / name, src, workdir)
               for name in RUNTIME_SOURCES]
    model = compile_c(cc.cc, compile_flags, src / "model.c", src, workdir)
    linked = [str(model), *map(str, runtime), str(src / "kernels.o")]
    link = _link_wasm if cc.wasm else _link_elf
    library, files, executable = link(cc, compile_flags, linked, src, out_dir, workdir)
    sizes = {"runtime_code": sum(map(text_bytes, runtime)),
             "model_tables": text_bytes(model, data=True),
             "kernel_code": text_bytes(src / "kernels.o"),
             "weights": sum(n for _, n in plan.weights),
             "constants": len(plan.consts),
             "library_file": (out_dir / library).stat().st_size}
    runner = {"executable": executable, "emulator": list(cc.emulator),
              "emulator_hint": cc.emulator_hint} if executable else {}
    return BuildOutput(
        files=[library, *HEADERS, *files], form="aot-exec" if executable else "aot-shared",
        manifest={"library": library, "device": "cpu",
                  "aot": {"machine": cc.machine, "arena_bytes": plan.arena_bytes,
                          "weights": [list(w) for w in plan.weights], **runner}},
        report={"schedule": schedule_report(schedule, stats), "aot": plan.to_json(),
                "sizes": sizes, "compiler": cc.cc})


def _link_elf(cc: CToolchain, compile_flags: list[str], linked: list[str], src: Path,
              out_dir: Path, workdir: Path) -> tuple[str, list[str], str | None]:
    """A shared library exporting only honer's API; with `cc.driver`, the driver program."""
    (src / "exports.map").write_text(EXPORTS)
    _run(cc.cc, ["-shared", "-o", str(out_dir / LIBRARY), *linked, "-lm", "-lpthread",
                 f"-Wl,--version-script={src / 'exports.map'}"], workdir)
    if not cc.driver:
        return LIBRARY, [], None
    _run(cc.cc, [*compile_flags, "-o", str(out_dir / DRIVER),
                 str(RUNTIME_DIR / "honer_main.c"), *linked, "-lm", "-lpthread"], workdir)
    return LIBRARY, [DRIVER], DRIVER


def _link_wasm(cc: CToolchain, compile_flags: list[str], linked: list[str], src: Path,
               out_dir: Path, workdir: Path) -> tuple[str, list[str], str | None]:
    """model.wasm (a WASI reactor exporting honer's API and an allocator for the loader), the
    JavaScript loader, its Node.js driver and a page that runs the model in a browser."""
    exports = ",".join(f"--export={name}" for name in (*API, "aligned_alloc"))
    _run(cc.cc, [*cc.flags, "-mexec-model=reactor", "-o", str(out_dir / WASM), *linked, "-lm",
                 f"-Wl,{exports},--strip-all"], workdir)
    for name in JS_FILES:
        shutil.copy(RUNTIME_DIR / name, out_dir / name)
    (out_dir / NODE_DRIVER).chmod(0o755)  # run like the native driver
    return WASM, list(JS_FILES), NODE_DRIVER


def schedule_report(schedule: CPUScheduleConfig, stats: ScheduleStats) -> dict[str, Any]:
    return {"lanes": schedule.lanes, "int8_dot": schedule.int8_dot or None,
            "contractions": stats.contractions, "decoding": stats.decoding,
            "winograd": stats.winograd, "attention": stats.attention,
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


def compile_c(cc: str, flags: list[str], source: Path, out_dir: Path, workdir: Path) -> Path:
    """Compiles one C file into an object file in `out_dir`; returns its path."""
    obj = out_dir / (source.stem + ".o")
    _run(cc, [*flags, "-c", str(source), "-o", str(obj)], workdir)
    return obj


def text_bytes(obj: Path, data: bool = False) -> int:
    """Bytes of an ELF64 object's code sections (with `data`, its allocated data too): what
    the code costs in memory, without symbol tables and relocations."""
    raw = obj.read_bytes()
    if raw[:4] == b"\0asm":
        return _wasm_section_bytes(raw, {10, 11} if data else {10})  # code (and data)
    if raw[:4] != b"\x7fELF" or raw[4] != 2:  # neither: the file size is the best guess
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


def _wasm_section_bytes(raw: bytes, ids: set[int]) -> int:
    """Bytes of the WebAssembly sections with the given ids (10: code, 11: data)."""
    at, total = 8, 0  # after the magic and the version
    while at < len(raw):
        section, at = raw[at], at + 1
        size = shift = 0
        while True:  # unsigned LEB128
            byte, at = raw[at], at + 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        total += size if section in ids else 0
        at += size
    return total
