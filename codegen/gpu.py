"""CUDA code generation: TVM's GPU pipeline with dlight schedules, kernels compiled ahead of time.

The kernels are scheduled by TVM's dlight rules (matmul on tensor cores where the dtypes allow,
GEMV, reductions, general reductions, and a fallback that maps every remaining loop nest onto
threads). With `precision` float16 or bfloat16, Relax's ToMixedPrecision runs matmuls and
convolutions on half-precision inputs with float32 accumulation; weights that only feed such a
cast are stored in half precision in the artifact.

TVM on a machine without the CUDA driver keeps the generated CUDA source and would compile it
when the module is loaded on a GPU machine. honer compiles it here instead, with nvcc, into one
fatbin holding machine code for every requested architecture: compile errors surface at build
time, the resource usage ptxas reports is checked against each architecture's launch limits,
and the deployed runtime needs no CUDA compiler.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from ..errors import BuildError
from ..runtime.cuda_limits import UNKNOWN_ARCH_BYTES, dynamic_shared_bytes
from . import int8_tc, sparse_tc
from .build import last_error_line
from .cuda_kernels import is_op
from .gpu_matmul import TensorCoreMatmul
from .relax_lower import LoweredModule

R = relax.op
PRECISIONS = ("float32", "float16", "bfloat16")
HAND_WRITTEN = (sparse_tc, int8_tc)  # modules of kernels written in CUDA (cuda_kernels.py)


@dataclass(frozen=True)
class GPUConfig:
    archs: tuple[str, ...] = ("sm_80", "sm_90")  # machine code is generated for each
    precision: str = "float32"  # compute dtype of matmuls and convs (accumulation stays fp32)
    # replay the kernel sequence as CUDA graphs (Relax's RewriteCUDAGraph): one launch for
    # the static stretches instead of one per kernel, which is what small models wait on
    graphs: bool = False
    # block tile of fp16 tensor-core matmuls: "auto" sizes it to the problem (gpu_matmul.py);
    # "128x128" is dlight's fixed tile
    mma_tile: str = "auto"
    # block of the many-token 2:4 kernel (sparse_tc.TILE_NAMES); "auto" sizes it to the layer
    sparse_tile: str = "auto"


# Per-architecture limits (CUDA C programming guide, "compute capabilities" table).
@dataclass(frozen=True)
class ArchLimits:
    threads_per_block: int = 1024
    block_dims: tuple[int, int, int] = (1024, 1024, 64)
    grid_dims: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
    registers_per_block: int = 65536
    registers_per_thread: int = 255
    static_shared_bytes: int = 48 * 1024
    dynamic_shared_bytes: int = UNKNOWN_ARCH_BYTES  # per block, opted in (TVM does, > 48 KB)


ARCH_LIMITS = {arch: ArchLimits(dynamic_shared_bytes=dynamic_shared_bytes(arch))
               for arch in ("sm_80", "sm_86", "sm_89", "sm_90")}


def dynamic_shared_limit(archs: tuple[str, ...]) -> int:
    """The dynamic shared memory a block may have on every one of `archs` (an sm_80 build
    that needs more than sm_86's is refused by the loader there: see runtime.cuda_limits)."""
    return min(dynamic_shared_bytes(a) for a in archs)


@dataclass
class KernelLaunch:
    threads: tuple[int, int, int] = (1, 1, 1)
    blocks: tuple[int, int, int] = (1, 1, 1)
    registers: dict[str, int] = field(default_factory=dict)  # per arch, from ptxas
    shared_bytes: dict[str, int] = field(default_factory=dict)
    spill_bytes: dict[str, int] = field(default_factory=dict)
    dynamic_shared_bytes: int = 0  # hand-written kernels' (dlight's are sized by TVM)


@dataclass
class CudaBuild:
    executable: relax.VMExecutable
    source: str  # the CUDA C++ TVM generated (the kernels' key at load time)
    fatbin: bytes  # nvcc's output for every arch
    launches: dict[str, KernelLaunch]
    half_params: list[int]  # indices of weights now stored in `precision`

    @property
    def source_sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()


def _dlight_schedule(cfg: GPUConfig) -> tvm.transform.Pass:
    """honer's tensor-core matmul rule (gpu_matmul.py; it leaves 128x128 tiles to dlight's),
    then dlight's GPU rules, each declining a kernel it fails on so the next rule takes it:
    TVM 0.27's GEMV rule asserts on some batched matrix-vector shapes (a token-merge plan
    applied to the token sizes, [B, N', N] x [B, N, 1]) instead of returning None."""
    from tvm.s_tir import dlight as dl

    class Declining(dl.ScheduleRule):
        def __init__(self, rule: dl.ScheduleRule):
            self.rule = rule

        def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool) -> Any:
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:  # noqa: BLE001 - the rule's own failure: let the next one try
                return None

    rules = (TensorCoreMatmul(cfg.mma_tile), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
             dl.gpu.GeneralReduction(), dl.gpu.Fallback())
    return dl.ApplyDefaultSchedule(*(Declining(r) for r in rules))


def gpu_pipeline(target: tvm.target.Target, cfg: GPUConfig) -> tvm.transform.Pass:
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0, name="HonerGPUPipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            legalize = [_dlight_schedule(cfg) if isinstance(p, dl.ApplyDefaultSchedule) else p
                        for p in cuda.legalize_passes(target)]
            # a matmul with a transposed [out, in] weight: one kernel (see gpu_matmul.py)
            passes = (cuda.library_dispatch_passes(target)
                      + [relax.transform.FuseTransposeMatmul()] + legalize
                      + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def build_cuda(lowered: LoweredModule, tvm_target: dict[str, Any], cfg: GPUConfig,
               workdir: Path) -> CudaBuild:
    target = tvm.target.Target(tvm_target)
    mod = int8_tc.on_tensor_cores(bools_as_int8(scans_as_matmul(lowered.mod)))
    mod, half_params = _mixed_precision(mod, cfg.precision, cfg.sparse_tile,
                                        dynamic_shared_limit(cfg.archs))
    config = {"relax.backend.use_cuda_graph": cfg.graphs}  # read by RewriteCUDAGraph
    try:
        with target, tvm.transform.PassContext(opt_level=3, config=config):
            lowered_mod = gpu_pipeline(target, cfg)(mod)
            launches = {name: _kernel_launch(f)
                        for name, f in _device_kernels(lowered_mod).items()}
            executable = relax.build(lowered_mod, target=target, relax_pipeline=None)
    except Exception as e:  # a TVM failure here is a honer bug or an unsupported shape
        raise BuildError(f"TVM build for {tvm_target} failed: {last_error_line(e)}") from e
    source = _cuda_source(executable.mod)
    # the runtime asks for kernels by TVM's source (CudaBuild.source_sha256); what nvcc
    # compiles may add the device functions honer's hand-written kernels call
    compiled = "".join(m.DEVICE_SOURCE for m in HAND_WRITTEN if m.called_in(source)) + source
    fatbin, ptxas_log = compile_fatbin(compiled, cfg.archs, workdir)
    _merge_ptxas_resources(launches, ptxas_log)
    check_launch_limits(launches, cfg.archs)
    return CudaBuild(executable, source, fatbin, launches, half_params)


def _with_main(mod: tvm.IRModule, func: relax.Function) -> tvm.IRModule:
    mod = mod.clone()  # the caller's module stays as it was
    mod["main"] = func
    return mod


def _rewrite_main(mod: tvm.IRModule, mutator: relax.PyExprMutator) -> tvm.IRModule:
    return _with_main(mod, mutator.visit_expr(mod["main"]))


SCAN_AS_MATMUL_MAX = 4096  # longest scan axis rewritten (the matrix is n x n)


def scans_as_matmul(mod: tvm.IRModule) -> tvm.IRModule:
    """TVM's CUDA scan kernel (what cumsum dispatches to) reads and writes shared memory across
    the threads of a warp without synchronizing, which is a race on sm_70 and later: on an
    H200 it produced wrong attention masks for GPT-2 and Llama. The scans transformers run
    (mask bookkeeping, position ids) are short, so each becomes a product with a triangular
    matrix of ones, which is exact for integers."""
    return _rewrite_main(mod, _ScanAsMatmul())


@relax.expr_functor.mutator
class _ScanAsMatmul(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.cumsum"):
            return call
        x = call.args[0]
        shape = [int(d) for d in x.ty.shape.values]
        axis = call.attrs.axis
        if axis is None or not 0 < shape[int(axis)] <= SCAN_AS_MATMUL_MAX:
            return call
        axis = int(axis) % len(shape)
        n = shape[axis]
        dtype = str(call.attrs.dtype) if call.attrs.dtype else str(x.ty.dtype)
        # ones[i, j] = 1 where element i counts towards output j
        ones = np.triu(np.ones((n, n)), k=1 if call.attrs.exclusive else 0).astype(dtype)
        order = [d for d in range(len(shape)) if d != axis] + [axis]
        back = [order.index(d) for d in range(len(shape))]
        moved = self.builder_.emit(R.permute_dims(R.astype(x, dtype), order))
        summed = self.builder_.emit(R.matmul(moved, relax.const(ones, dtype)))
        return R.permute_dims(summed, back)


def bools_as_int8(mod: tvm.IRModule) -> tvm.IRModule:
    """TVM's CUDA code generator loads a vector of N bools as N 16-bit values (`ushort2` for
    two), reading the wrong bytes at the wrong alignment: on an H200 the matmul kernels with a
    fused `where(mask, ...)` epilogue gave wrong attention scores in fp32 and faulted with a
    misaligned address in fp16. So no bool tensor is ever stored between kernels: each is kept
    as int8 (one byte, as bool) and turned back into bool where it is read, which the fusion
    places inside the consuming kernel."""
    return _rewrite_main(mod, _BoolsAsInt8())


@relax.expr_functor.mutator
class _BoolsAsInt8(relax.PyExprMutator):
    def __init__(self) -> None:
        super().__init__()
        self.renamed: dict[relax.Var, relax.Var] = {}
        self.stored: dict[relax.Var, relax.Var] = {}  # bool dataflow var -> its int8 copy

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        var = binding.var
        if not isinstance(var, relax.DataflowVar):  # the block's outputs stay as they are
            self.renamed[var] = self.builder_.emit_output(value, name_hint=var.name)
            return
        self.renamed[var] = new = self.builder_.emit(value, name_hint=var.name)
        ty = var.ty
        if isinstance(ty, relax.TensorType) and str(ty.dtype) == "bool":
            self.stored[var] = self.builder_.emit(R.astype(new, "int8"))

    def visit_var_(self, var: relax.Var) -> relax.Expr:
        return self.renamed.get(var, var)

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> relax.Expr:
        if var in self.stored:
            return self.builder_.emit(R.astype(self.stored[var], "bool"))
        return self.renamed.get(var, var)


def _mixed_precision(mod: tvm.IRModule, precision: str, sparse_tile: str = "auto",
                     shared_limit: int | None = None) -> tuple[tvm.IRModule, list[int]]:
    """float32 leaves the module alone; half precision converts matmuls and convs (fp32
    accumulation) and turns weights that are only ever cast to half into half params."""
    if precision == "float32":
        return mod, []
    if precision == "bfloat16":
        # numpy has no bfloat16, so the artifact keeps these weights in float32 and the cast
        # runs on the device with each call
        return _to_bf16(mod), []
    # 2:4-sparse layers go to the sparse tensor cores, which take half inputs
    return _half_params(sparse_tc.on_tensor_cores(_casts_before_transposes(
        _to_mixed_precision(mod)), sparse_tile, shared_limit), precision)


def _to_bf16(mod: tvm.IRModule) -> tvm.IRModule:
    """ToMixedPrecision speaks float16 only; bfloat16 reuses its decisions with every cast to
    float16 made a cast to bfloat16 (the other ops take their dtype from their inputs)."""
    return _rewrite_main(_casts_before_transposes(_to_mixed_precision(mod)), _CastsToBF16())


def _casts_before_transposes(mod: tvm.IRModule) -> tvm.IRModule:
    """ToMixedPrecision casts a linear's transposed [out, in] weight to half after the
    transpose; cast first, so the weight is stored in half (`_half_params`) and the transpose
    meets the matmul directly, which FuseTransposeMatmul folds into one kernel."""
    return _rewrite_main(mod, _SwapCastTranspose(mod))


@relax.expr_functor.mutator
class _SwapCastTranspose(relax.PyExprMutator):
    """astype(permute_dims(w)) -> permute_dims(astype(w)) for a function parameter w."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (is_op(call, "relax.astype") and isinstance(call.args[0], relax.Var)):
            return call
        source = self.lookup_binding(call.args[0])
        if not (is_op(source, "relax.permute_dims") and isinstance(source.args[0], relax.Var)
                and self.lookup_binding(source.args[0]) is None):
            return call
        cast = self.builder_.emit(R.astype(source.args[0], call.attrs.dtype))
        return R.permute_dims(cast, source.attrs.axes)


def _to_mixed_precision(mod: tvm.IRModule) -> tvm.IRModule:
    """TVM 0.27's ToMixedPrecision asserts ("Expected TensorType, but got R.Callable") on a
    `call_tir` whose tensor argument it has converted: it types the kernel's GlobalVar as if it
    were a tensor. honer's own kernels (quantized matmuls, token plans) are call_tir, so each
    is hidden in a private Relax function while the pass runs (their inputs are cast back to
    float32 as for any op it leaves alone) and put back in place afterwards."""
    hider = _TirCallsAsFunctions(mod)
    main = hider.visit_expr(mod["main"])
    wrapped = _with_main(hider.builder_.get(), main)
    converted = relax.transform.ToMixedPrecision(out_dtype="float32")(wrapped)
    wrappers = {gv: f for gv, f in converted.functions.items()
                if gv.name_hint.startswith(_TIR_WRAPPER)}
    restored = _rewrite_main(converted, _InlineTirWrappers(wrappers))
    for gv in wrappers:
        del restored[gv]
    return restored


_TIR_WRAPPER = "honer_tir_call_"


@relax.expr_functor.mutator
class _TirCallsAsFunctions(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
            return call
        params = [relax.Var(f"a{i}", a.ty) for i, a in enumerate(call.args[1].fields)]
        wrapper = relax.BlockBuilder()
        with wrapper.function("wrapper", params, private=True):
            out = wrapper.emit(relax.Call(call.op, [call.args[0], relax.Tuple(params)],
                                          call.attrs, call.ty_args))
            wrapper.emit_func_output(out)
        func = wrapper.get()["wrapper"]
        gv = self.builder_.add_func(func, _TIR_WRAPPER + call.args[0].name_hint)
        return relax.Call(gv, list(call.args[1].fields))


@relax.expr_functor.mutator
class _InlineTirWrappers(relax.PyExprMutator):
    def __init__(self, wrappers: dict[relax.GlobalVar, relax.Function]) -> None:
        super().__init__()
        self.wrappers = wrappers

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        func = self.wrappers.get(call.op) if isinstance(call.op, relax.GlobalVar) else None
        if func is None:
            return call
        inner = func.body.blocks[-1].bindings[-1].value  # the call_tir
        return relax.Call(inner.op, [inner.args[0], relax.Tuple(list(call.args))], inner.attrs,
                          inner.ty_args)


@relax.expr_functor.mutator
class _CastsToBF16(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.astype"
                and str(call.attrs.dtype) == "float16"):
            return R.astype(call.args[0], "bfloat16")
        return call


def _half_params(mod: tvm.IRModule, precision: str) -> tuple[tvm.IRModule, list[int]]:
    """Params whose every use is `astype(p, precision)` become params of that dtype."""
    func = mod["main"]
    num_input = int(func.attrs["num_input"])
    uses: dict[relax.Var, list[relax.VarBinding | None]] = {}
    casts: dict[relax.Var, list[relax.VarBinding]] = {}
    astype = tvm.ir.Op.get("relax.astype")

    def visit(expr: relax.Expr, binding: relax.VarBinding | None) -> None:
        for arg in [expr] if isinstance(expr, relax.Var) else \
                getattr(expr, "args", []) or getattr(expr, "fields", []):
            if isinstance(arg, relax.Var):
                uses.setdefault(arg, []).append(binding)

    visit(func.body.body, None)  # a weight returned as it is keeps its dtype
    for block in func.body.blocks:
        for b in block.bindings:
            visit(b.value, b)
            if (isinstance(b.value, relax.Call) and b.value.op.same_as(astype)
                    and isinstance(b.value.args[0], relax.Var)
                    and str(b.value.attrs.dtype) == precision):
                casts.setdefault(b.value.args[0], []).append(b)
    new_params = list(func.params)
    replace: dict[relax.Var, relax.Expr] = {}
    half = []
    for i, p in enumerate(func.params[num_input:], start=num_input):
        if p in casts and len(casts[p]) == len(uses.get(p, [])):
            q = relax.Var(p.name, relax.TensorType(p.ty.shape, precision))
            new_params[i] = q
            for b in casts[p]:
                replace[b.var] = q
            half.append(i - num_input)
    if not half:
        return mod, []
    body = _Rebind(replace).visit_expr(func.body)
    new_func = relax.Function(new_params, body, func.ret_ty, func.is_pure,
                              func.attrs, func.span)
    mod = _with_main(mod, new_func)
    return relax.transform.DeadCodeElimination()(mod), half


@relax.expr_functor.mutator
class _Rebind(relax.PyExprMutator):
    """Drops the cast bindings of half params and reads the params directly instead."""

    def __init__(self, replace: dict[relax.Var, relax.Expr]):
        super().__init__()
        self.replace = replace

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.replace:
            super().visit_var_binding_(binding)

    def visit_var_(self, var: relax.Var) -> relax.Expr:
        return self.replace.get(var, var)

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> relax.Expr:
        return self.replace.get(var, var)


def _device_kernels(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc)}


_INT = r"(?:T\.int(?:32|64)\()?(\d+)\)?"
_THREAD_BINDING = re.compile(
    rf'T\.thread_binding\((?:{_INT}, )?{_INT}, thread="(\w+)\.([xyz])"')
_LAUNCH_THREAD = re.compile(rf'T\.launch_thread\("(\w+)\.([xyz])", {_INT}\)')
_DYNAMIC_SHARED = re.compile(r'T\.alloc_buffer\(\((\d+),\), "uint8", scope="shared\.dyn"\)')


def _kernel_launch(func: tirx.PrimFunc) -> KernelLaunch:
    """Thread and block extents a scheduled kernel binds (the largest seen per axis; symbolic
    extents are left out), and the dynamic shared memory a hand-written kernel allocates as
    bytes (dlight's is sized by TVM). TVM's Python API has no TIR visitor any more, so they
    are read off the printed TIR."""
    threads, blocks = [1, 1, 1], [1, 1, 1]
    script = func.script()
    bindings = [(int(m.group(2)) - int(m.group(1) or 0), m.group(3), m.group(4))
                for m in _THREAD_BINDING.finditer(script)]
    bindings += [(int(m.group(3)), m.group(1), m.group(2))  # hand-written kernels
                 for m in _LAUNCH_THREAD.finditer(script)]
    for extent, kind, axis in bindings:
        dims = threads if kind == "threadIdx" else blocks
        dims["xyz".index(axis)] = max(dims["xyz".index(axis)], extent)
    dynamic = sum(int(m.group(1)) for m in _DYNAMIC_SHARED.finditer(script))
    return KernelLaunch(tuple(threads), tuple(blocks), dynamic_shared_bytes=dynamic)


def _cuda_source(module: Any) -> str:
    """The CUDA C++ of the device module TVM generated (it holds it as source, see above)."""
    stack = [module]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            return str(m.inspect_source("cuda"))
        stack.extend(m.imports)
    raise BuildError("the CUDA build produced no device module (no kernels?)")


def nvcc_path() -> str:
    path = shutil.which("nvcc")
    if path is None:
        raise BuildError("nvcc not found; install the CUDA toolkit")
    return path


def compile_fatbin(source: str, archs: tuple[str, ...], workdir: Path) -> tuple[bytes, str]:
    """One fatbin with machine code (SASS) for every arch; returns it and ptxas's report."""
    src = workdir / "kernels.cu"
    out = workdir / "kernels.fatbin"
    src.write_text(source)
    cmd = [nvcc_path(), "-fatbin", "-O3", "-std=c++17", "--ptxas-options=-v",
           "-o", str(out), str(src)]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = workdir / "nvcc.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        # the build's directory is temporary: the source and log are kept where they can be read
        kept = Path(tempfile.mkdtemp(prefix="honer-nvcc-failed-"))
        shutil.copy(src, kept)
        shutil.copy(log, kept)
        errors = [ln for ln in proc.stderr.splitlines() if ": error" in ln]
        raise BuildError(f"nvcc failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"source and log kept in {kept}:\n"
                         f"{_tail(chr(10).join(errors) or proc.stderr)}")
    return out.read_bytes(), proc.stdout + proc.stderr


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores")


def _merge_ptxas_resources(launches: dict[str, KernelLaunch], log: str) -> None:
    current: tuple[str, str] | None = None
    for line in log.splitlines():
        if m := _PTXAS_ENTRY.search(line):
            current = (_kernel_owner(m.group(1), launches), m.group(2))
        elif current and current[0] in launches and (m := _PTXAS_USED.search(line)):
            launch = launches[current[0]]
            launch.registers[current[1]] = int(m.group(1))
            launch.shared_bytes[current[1]] = int(m.group(2) or 0)
        elif current and current[0] in launches and (m := _PTXAS_SPILL.search(line)):
            launch = launches[current[0]]
            launch.spill_bytes[current[1]] = int(m.group(1))


def _kernel_owner(entry: str, launches: dict[str, KernelLaunch]) -> str:
    # TVM names the device function '<prim_func>_kernel' (with a suffix when split in several)
    base = re.sub(r"_kernel(_\d+)?$", "", entry)
    return base if base in launches else entry


def check_launch_limits(launches: dict[str, KernelLaunch], archs: tuple[str, ...]) -> None:
    problems = []
    for name, k in launches.items():
        for arch in archs:
            lim = ARCH_LIMITS.get(arch, ArchLimits())
            threads = k.threads[0] * k.threads[1] * k.threads[2]
            regs = k.registers.get(arch, 0)
            checks = [
                (threads <= lim.threads_per_block, f"{threads} threads per block"),
                (all(t <= m for t, m in zip(k.threads, lim.block_dims)), f"block {k.threads}"),
                (all(b <= m for b, m in zip(k.blocks, lim.grid_dims)), f"grid {k.blocks}"),
                (regs * threads <= lim.registers_per_block,
                 f"{regs} registers x {threads} threads"),
                (k.shared_bytes.get(arch, 0) <= lim.static_shared_bytes,
                 f"{k.shared_bytes.get(arch, 0)} bytes of static shared memory"),
                (k.dynamic_shared_bytes <= lim.dynamic_shared_bytes,
                 f"{k.dynamic_shared_bytes} bytes of dynamic shared memory"),
            ]
            problems += [f"{name} on {arch}: {what}" for ok, what in checks if not ok]
    if problems:
        raise BuildError("kernels exceed the launch limits of their architecture:\n  "
                         + "\n  ".join(problems))


def launch_report(launches: dict[str, KernelLaunch]) -> dict[str, Any]:
    return {name: {"threads": list(k.threads), "blocks": list(k.blocks),
                   "registers": k.registers, "shared_bytes": k.shared_bytes,
                   **({"dynamic_shared_bytes": k.dynamic_shared_bytes}
                      if k.dynamic_shared_bytes else {}),
                   **({"spill_bytes": k.spill_bytes} if any(k.spill_bytes.values()) else {})}
            for name, k in sorted(launches.items())}


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


