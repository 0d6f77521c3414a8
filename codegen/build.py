"""The one place that drives TVM's Relax build and library export."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tvm
from tvm import relax, tirx

from ..errors import BuildError
from .attention import honer_kernel
from .cpu_schedule import CPUScheduleConfig, ScheduleStats, is_opaque, is_tunable, schedule_module
from .relax_lower import LoweredModule
from .tuning import TuneConfig, TunedKernels, TuneReport, tune_kernels


def tvm_version() -> str:
    return str(tvm.__version__)


def _pre_schedule_passes(target: tvm.target.Target,
                         cfg: CPUScheduleConfig) -> list[tvm.transform.Pass]:
    """Up to fused, legalized kernels: what the schedule rules and the tuner both see."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    fast_math = [relax.transform.FastMathTransform()] if cfg.fast_math else []
    return (fast_math + cpu_generic.library_dispatch_passes(target)
            + cpu_generic.legalize_passes(target))


def cpu_pipeline(target: tvm.target.Target, cfg: CPUScheduleConfig, stats: ScheduleStats,
                 tuned: TunedKernels | None = None,
                 finalize: list[tvm.transform.Pass] | None = None) -> tvm.transform.Pass:
    """TVM's CPU pipeline with honer's schedules (tuned where the database has a faster one,
    rules otherwise) between fusion and lowering; `finalize` replaces the VM's last passes."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0, name="HonerCPUSchedule")
    def apply_rules(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return schedule_module(mod, cfg, stats, tuned.schedule if tuned else None)

    @tvm.transform.module_pass(opt_level=0, name="HonerCPUPipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = (_pre_schedule_passes(target, cfg) + [apply_rules]
                      + cpu_generic.dataflow_lower_passes(target)
                      + (cpu_generic.finalize_passes(target) if finalize is None else finalize))
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def _fused_module(lowered: LoweredModule, tvm_target: dict[str, Any],
                  cfg: CPUScheduleConfig) -> tvm.IRModule:
    target = tvm.target.Target(tvm_target)
    with target:
        return tvm.transform.Sequential(_pre_schedule_passes(target, cfg))(lowered.mod)


def _kernels(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc) and not is_opaque(f)}


def _call_counts(mod: tvm.IRModule) -> dict[str, int]:
    """How often `main` calls each kernel (one kernel serves every identical layer)."""
    counts: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                name = value.args[0].name_hint
                counts[name] = counts.get(name, 0) + 1
    return counts


def rule_scheduled_kernels(mod: tvm.IRModule, cfg: CPUScheduleConfig) -> dict[str, tirx.PrimFunc]:
    """The fused module's kernels that honer's rules schedule (TVM's own opaque kernels left
    out, honer's own in: the one-kernel attention and its k^T), each with its rule schedule."""
    kernels = {gv.name_hint: f for gv, f in mod.functions.items()
               if isinstance(f, tirx.PrimFunc) and (not is_opaque(f) or honer_kernel(f))}
    return {name: schedule_module(tvm.IRModule({"main": f}), cfg)["main"]
            for name, f in kernels.items()}


def fused_kernels(lowered: LoweredModule, tvm_target: dict[str, Any],
                  cfg: CPUScheduleConfig | None = None) -> dict[str, tirx.PrimFunc]:
    """The model's kernels as the schedule step receives them (name -> PrimFunc)."""
    return _kernels(_fused_module(lowered, tvm_target, cfg or CPUScheduleConfig()))


def tune_cpu(lowered: LoweredModule, tvm_target: dict[str, Any], cfg: CPUScheduleConfig,
             tune: TuneConfig, progress: Callable[[str], None]) -> TuneReport:
    """MetaSchedule over the model's kernels, compared kernel by kernel with the rules."""
    def rules(func: tirx.PrimFunc) -> tirx.PrimFunc:
        return schedule_module(tvm.IRModule({"main": func}), cfg)["main"]

    mod = _fused_module(lowered, tvm_target, cfg)
    kernels = {name: f for name, f in _kernels(mod).items() if is_tunable(f)}
    return tune_kernels(kernels, tvm.target.Target(tvm_target), rules, tune, progress,
                        _call_counts(mod))


def build_relax(lowered: LoweredModule, tvm_target: dict[str, Any],
                schedule: CPUScheduleConfig | None = None,
                stats: ScheduleStats | None = None,
                tuned: TunedKernels | None = None) -> relax.VMExecutable:
    """Compiles the Relax module; with `schedule`, through honer's CPU schedules."""
    target = tvm.target.Target(tvm_target)
    stats = stats if stats is not None else ScheduleStats()
    pipeline = "default" if schedule is None else cpu_pipeline(target, schedule, stats, tuned)
    try:
        with target:
            return relax.build(lowered.mod, target=target, relax_pipeline=pipeline)
    except Exception as e:  # a TVM failure here is a honer bug or an unsupported shape
        raise BuildError(f"TVM build for {tvm_target} failed: {last_error_line(e)}") from e


def plan_static(lowered: LoweredModule, tvm_target: dict[str, Any],
                schedule: CPUScheduleConfig, stats: ScheduleStats,
                tuned: TunedKernels | None = None) -> tvm.IRModule:
    """The CPU pipeline with the same schedules as build_relax, stopped after static memory
    planning (the VM's own lowering passes skipped): `main` becomes a flat list of storage
    allocations, views into them and kernel calls, which codegen.aot turns into C."""
    target = tvm.target.Target(tvm_target)
    finalize = [relax.transform.StaticPlanBlockMemory(), relax.transform.AttachGlobalSymbol()]
    try:
        return cpu_pipeline(target, schedule, stats, tuned, finalize)(lowered.mod)
    except Exception as e:
        raise BuildError(f"TVM lowering for {tvm_target} failed: {last_error_line(e)}") from e


def build_kernels_object(mod: tvm.IRModule, tvm_target: dict[str, Any], path: Path) -> None:
    """Compiles the module's kernels into one object file. With a system-lib prefix the kernels
    need no dynamic loader's registry: they are plain symbols (`__tvm_ffi_<name>`)."""
    kernels = {gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    target = tvm.target.Target(tvm_target)
    try:
        kmod = tvm.IRModule(kernels).with_attr("system_lib_prefix", "honer_")
        tvm.tirx.build(kmod, target=target).write_to_file(os.fspath(path))
    except Exception as e:
        raise BuildError(f"TVM kernel build for {tvm_target} failed: {last_error_line(e)}") \
            from e


def export_library(executable: relax.VMExecutable, path: Path, workdir: Path,
                   objects: tuple[Path, ...] = ()) -> None:
    """Links the executable, with any further object files, into one shared library at `path`
    (via the system C++ compiler)."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            executable.export_library(os.fspath(path), workspace_dir=os.fspath(workdir),
                                      addons=[os.fspath(o) for o in objects] or None)
    except Exception as e:
        raise BuildError(f"linking {path.name} failed: {last_error_line(e)}") from e


def launches_through_hook(executable: relax.VMExecutable) -> bool:
    """Whether the CPU kernels launch their parallel loops through the library's hook
    (`__TVMBackendParallelLaunch`, which the loader can repoint at another thread pool): they
    have parallel loops, and none calls TVM's barrier, which is TVM's by symbol and works only
    on tasks that TVM's pool launched."""
    sources = [m.inspect_source("ll") for m in executable.mod.imports if m.kind == "llvm"]
    return any("__TVMBackendParallelLaunch" in s for s in sources) and \
        not any("TVMBackendParallelBarrier" in s for s in sources)


def last_error_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__
