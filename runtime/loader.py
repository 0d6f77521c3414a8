"""Loads an artifact and runs it with numpy in and out. Imports neither torch nor onnx.

Each artifact form names how its compiled code runs. The `relax-vm` form runs the shared library
through TVM's runtime (imported lazily, only when such an artifact is loaded); the standalone
forms (`aot-shared`, `aot-exec`) need no TVM at all (runtime/standalone.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError
from .artifact import WEIGHTS, read_manifest, read_weights
from .cpu import check_cpu_features
from .cuda_limits import dynamic_shared_bytes
from .standalone import open_aot_exec, open_aot_shared


class LoadedModel:
    """A loaded artifact: call it with numpy arrays (positional or by input name)."""

    def __init__(self, path: Path, manifest: dict[str, Any],
                 open_code: Callable[[], Callable[..., list]], lazy: bool = False):
        self.path = path
        self.manifest = manifest
        self._open_code = open_code
        self._compiled: Callable[..., list] | None = None if lazy else open_code()
        self.input_specs = manifest["inputs"]
        self.output_specs = manifest["outputs"]

    @property
    def compiled(self) -> Callable[..., list]:
        """The opened compiled code (opened now if the load was lazy)."""
        if self._compiled is None:
            self._compiled = self._open_code()
        return self._compiled

    @property
    def input_names(self) -> list[str]:
        return [s["name"] for s in self.input_specs]

    @property
    def output_names(self) -> list[str]:
        return [s["name"] for s in self.output_specs]

    def run(self, *inputs: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        """Always returns the list of outputs."""
        arrays = self._check(inputs, named)
        return self.compiled(arrays)  # a lazy load opens the code here, on first use

    def __call__(self, *inputs: np.ndarray, **named: np.ndarray) -> np.ndarray | list:
        outs = self.run(*inputs, **named)
        return outs[0] if len(outs) == 1 else outs

    def _check(self, inputs: Sequence[Any], named: Mapping[str, Any]) -> list[np.ndarray]:
        specs = self.input_specs
        if named:
            if inputs:
                raise InputError("pass inputs either positionally or by name, not both")
            unknown = set(named) - set(self.input_names)
            if unknown:
                raise InputError(f"unknown input name(s) {sorted(unknown)}; the model takes "
                                 f"{self.input_names}")
            missing = [n for n in self.input_names if n not in named]
            if missing:
                raise InputError(f"missing input(s) {missing}")
            inputs = [named[n] for n in self.input_names]
        if len(inputs) != len(specs):
            raise InputError(f"the model takes {len(specs)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        arrays = []
        for spec, x in zip(specs, inputs):
            if not isinstance(x, np.ndarray):
                raise InputError(f"input {spec['name']}: expected a numpy array, got "
                                 f"{type(x).__name__}")
            if str(x.dtype) != spec["dtype"]:
                raise InputError(f"input {spec['name']}: dtype {x.dtype}, the model takes "
                                 f"{spec['dtype']} (convert with .astype('{spec['dtype']}'))")
            if list(x.shape) != list(spec["shape"]):
                raise InputError(f"input {spec['name']}: shape {list(x.shape)}, the model "
                                 f"takes {spec['shape']}")
            bound = spec.get("index_bound")
            if bound is not None and x.size and (x.min() < -bound or x.max() >= bound):
                raise InputError(f"input {spec['name']}: values must lie in [{-bound}, {bound}) "
                                 f"(they index a table of {bound} rows); got "
                                 f"[{x.min()}, {x.max()}]")
            # documented conversion: non-contiguous or misaligned arrays are copied
            arrays.append(np.ascontiguousarray(x))
        return arrays


def load(path: str | Path, lazy: bool = False) -> LoadedModel:
    """Checks the manifest and every file hash, then opens the compiled code (with `lazy`, at
    the first run: how a compile inspects an artifact built for a device this machine lacks)."""
    path = Path(path)
    manifest = read_manifest(path)
    _check_structure(path, manifest)
    form = manifest["target"].get("form")
    opener = FORMS.get(form)
    if opener is None:
        raise ArtifactError(f"{path}: unknown artifact form {form!r}; this runtime knows "
                            f"{sorted(FORMS)}")
    weights = read_weights(listed_file(path, manifest, WEIGHTS), manifest["weights"]) \
        if manifest.get("weights") else []
    def open_checked() -> Any:
        check_cpu_features(path, manifest)
        return opener(path, manifest, weights)

    return LoadedModel(path, manifest, open_checked, lazy)


def _check_structure(path: Path, manifest: dict[str, Any]) -> None:
    """The fields the runtime reads, with their types, so a hand-edited manifest is refused
    with a message instead of failing somewhere inside the loader."""
    def fail(what: str) -> None:
        raise ArtifactError(f"{path}: malformed manifest: {what}")

    if not isinstance(manifest.get("target"), dict):
        fail("'target' must be an object")
    for key in ("inputs", "outputs"):
        specs = manifest.get(key)
        if not isinstance(specs, list) or not all(
                isinstance(s, dict) and isinstance(s.get("name"), str)
                and isinstance(s.get("dtype"), str) and isinstance(s.get("shape"), list)
                and all(isinstance(d, int) and d >= 0 for d in s["shape"])
                and isinstance(s.get("index_bound", 0), int) for s in specs):
            fail(f"'{key}' must be a list of {{name, shape, dtype}}")
    weights = manifest.get("weights", [])
    if not isinstance(weights, list) or not all(
            isinstance(w, dict) and isinstance(w.get("name"), str)
            and isinstance(w.get("dtype"), str) and isinstance(w.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in w["shape"])
            and isinstance(w.get("offset"), int) and w["offset"] >= 0
            and isinstance(w.get("nbytes"), int) for w in weights):
        fail("'weights' must be a list of {name, dtype, shape, offset, nbytes}")


def listed_file(path: Path, manifest: dict[str, Any], rel: Any) -> Path:
    """Only files the manifest hashes (and read_manifest checked) are ever opened: a manifest
    naming its library as '../elsewhere.so' must not get that library loaded."""
    if not isinstance(rel, str) or rel not in manifest["files"]:
        raise ArtifactError(f"{path}: the manifest names {rel!r} to load, which is not one of "
                            "its hashed files")
    return path / rel


def _import_tvm_runtime() -> Any:
    """TVM's FFI imports torch eagerly whenever it is installed; a deployed model must not pay
    for that (seconds and hundreds of MB), so block it unless the user already imported it."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which TVM allows
    try:
        import tvm
        import tvm.runtime
        import tvm.runtime.vm
    except ImportError as e:
        raise ArtifactError("this artifact runs on TVM's runtime; install apache-tvm") from e
    finally:
        if blocked and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def _open_relax_vm(path: Path, manifest: dict[str, Any], weights: list[np.ndarray]):
    tvm = _import_tvm_runtime()
    runner = _run_on_vm(tvm, path, manifest, weights, tvm.runtime.device("cpu", 0))
    if manifest["target"].get("thread_pool") == "honer":
        runner.pool = _launch_on_honer_pool(listed_file(path, manifest,
                                                        manifest["target"]["library"]))
    return runner


def _launch_on_honer_pool(library: Path) -> ctypes.CDLL:
    """Points the library's parallel-launch hook, which TVM's loader just set to TVM's thread
    pool, at the honer pool linked into it (runtime/honer_pool.c). TVM's pool yields its
    cores while it waits, so one other busy process slowed ResNet-18 2.2x at nice 19 and 12x
    at nice 0; on honer's pool, which pauses instead, 1.4x and 2.2x (ONNX Runtime: 1.0x and
    2.4x; benchmarks/background_load.py). Threads: TVM_NUM_THREADS, else OMP_NUM_THREADS, as
    TVM's pool read them, else one per available core."""
    lib = ctypes.CDLL(os.fspath(library))  # the handle TVM already holds: the same library
    try:
        hook = ctypes.c_void_p.in_dll(lib, "__TVMBackendParallelLaunch")
        launch = ctypes.cast(lib.honer_pool_launch, ctypes.c_void_p).value
    except (AttributeError, ValueError) as e:
        raise ArtifactError(f"{library}: the manifest says honer's thread pool is linked in, "
                            f"but the library lacks it ({e})") from e
    hook.value = launch
    lib.honer_pool_set_threads.argtypes = [ctypes.c_int]
    lib.honer_pool_set_threads(_threads_from_environment())
    return lib


def _threads_from_environment() -> int:
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def _open_relax_vm_cuda(path: Path, manifest: dict[str, Any], weights: list[np.ndarray]):
    """The same VM on the first CUDA GPU, with the kernels nvcc compiled at build time."""
    tvm = _import_tvm_runtime()
    cuda = manifest["target"].get("cuda")
    if not isinstance(cuda, dict) or not isinstance(cuda.get("archs"), list):
        raise ArtifactError(f"{path}: malformed manifest: 'target.cuda' must list its archs")
    built = ", ".join(map(str, cuda["archs"]))
    if not _load_cuda_runtime(tvm) or not (device := tvm.runtime.cuda(0)).exist:
        raise ArtifactError(f"{path}: this artifact runs on an NVIDIA GPU (built for {built}) "
                            "and no CUDA GPU (or no NVIDIA driver) is visible here")
    arch = "sm_" + device.compute_version.replace(".", "")
    if not any(_runs_on(arch, a) for a in cuda["archs"]):
        raise ArtifactError(f"{path}: built for {built}, but this GPU ({device.device_name}) "
                            f"is {arch}; rebuild with target 'cuda:arch={arch}'")
    check_shared_memory(path, cuda, arch, device.device_name)
    fatbin = listed_file(path, manifest, cuda.get("kernels")).read_bytes()
    _provide_prebuilt_kernels(cuda.get("source_sha256"), fatbin)
    return _run_on_vm(tvm, path, manifest, weights, device)


def check_shared_memory(path: Path, cuda: Mapping[str, Any], arch: str, gpu: str) -> None:
    """sm_80 machine code runs on sm_86 and sm_89 GPUs too, which give a block less shared
    memory than sm_80 does: a kernel built to use more would fail at its first launch."""
    need, limit = cuda.get("dynamic_shared_bytes", 0), dynamic_shared_bytes(arch)
    if isinstance(need, int) and need > limit:
        raise ArtifactError(f"{path}: its kernels take {need} bytes of shared memory a block, "
                            f"and this GPU ({gpu}, {arch}) gives at most {limit}; rebuild "
                            f"with target 'cuda:arch={arch}'")


def _load_cuda_runtime(tvm: Any) -> bool:
    """TVM's CUDA device support is a side library the full `import tvm` loads with its
    backends; a runtime-only TVM (TVM_USE_RUNTIME_LIB=1, or no compiler library) does not.
    False when it cannot load (no NVIDIA driver: libcuda.so.1 missing)."""
    from tvm_ffi.libinfo import load_lib_ctypes

    loaded = tvm.base._LOADED_LIBS
    if "tvm_runtime_cuda" not in loaded:
        try:
            loaded["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda", mode="RTLD_LOCAL",
                extra_lib_paths=[Path(loaded["tvm_runtime"]._name).resolve().parent])
        except (OSError, RuntimeError):
            return False
    return True


def _runs_on(device_arch: str, built: Any) -> bool:
    """Machine code for sm_XY runs on devices of the same major version X and minor >= Y."""
    if not isinstance(built, str) or not built.startswith("sm_") or not built[3:].isdigit():
        return False
    dev, want = int(device_arch[3:]), int(built[3:])
    return dev // 10 == want // 10 and dev % 10 >= want % 10


_PREBUILT_KERNELS: dict[str, bytes] = {}  # sha256 of CUDA source -> fatbin


def _provide_prebuilt_kernels(source_sha256: Any, fatbin: bytes) -> None:
    """TVM's CUDA module holds its kernels as CUDA source and asks the global function
    `tvm_callback_cuda_compile` to compile them when loaded; this answers with the fatbin
    that was compiled from exactly that source at build time, so no compiler runs here."""
    import tvm_ffi

    if not isinstance(source_sha256, str):
        raise ArtifactError("malformed manifest: 'target.cuda.source_sha256' is missing")
    if not _PREBUILT_KERNELS:
        previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

        def compile_cuda(code: str) -> bytes:
            found = _PREBUILT_KERNELS.get(hashlib.sha256(code.encode()).hexdigest())
            if found is not None:
                return found
            if previous is not None:
                return previous(code)
            raise ArtifactError("CUDA kernels were requested for a source no loaded artifact "
                                "was built from")

        tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)
    _PREBUILT_KERNELS[source_sha256] = fatbin


def _run_on_vm(tvm: Any, path: Path, manifest: dict[str, Any], weights: list[np.ndarray],
               device: Any) -> VMRunner:
    runtime = tvm.runtime
    lib = runtime.load_module(str(listed_file(path, manifest, manifest["target"]["library"])))
    vm = runtime.vm.VirtualMachine(lib, device)
    params = [_as_tvm_tensor(runtime, w, device) for w in weights]
    return VMRunner(runtime, device, vm["main"], params)


class VMRunner:
    """Runs `main` with the weights bound. Called with numpy arrays (copied to the device and
    back); `on_device` takes and returns TVM tensors already on `device`, which is what a
    benchmark of the kernels alone times."""

    def __init__(self, runtime: Any, device: Any, main: Any, params: list[Any]):
        self.runtime = runtime
        self.device = device
        self.main = main
        self.params = params
        self.pool: ctypes.CDLL | None = None  # honer's thread pool, where the kernels use it

    def to_device(self, arrays: list[np.ndarray]) -> list[Any]:
        return [_as_tvm_tensor(self.runtime, x, self.device) for x in arrays]

    def on_device(self, tensors: list[Any]) -> Any:
        return self.main(*tensors, *self.params)

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = self.on_device(self.to_device(inputs))
        if isinstance(result, self.runtime.Tensor):
            return [result.numpy()]
        return [r.numpy() for r in result]


TVM_ALIGNMENT = 64  # bytes; TVM refuses to wrap (from_dlpack) memory aligned less


def _as_tvm_tensor(runtime: Any, array: np.ndarray, device: Any) -> Any:
    """On the CPU, the array itself where TVM can take it (zero copy: weights are the mapped
    file; the ViT's input at batch 8 took 0.42 ms to copy); otherwise one copy. DLPack cannot
    export a read-only array."""
    if device.dlpack_device_type() == 1 and array.size and array.flags.c_contiguous \
            and array.flags.writeable and array.ctypes.data % TVM_ALIGNMENT == 0:  # kDLCPU
        return runtime.from_dlpack(array)
    return runtime.tensor(array, device)


class CSimRunner:
    """Runs an FPGA-HLS artifact's C simulation (a g++ build of the HLS C++ and its testbench):
    float32 samples in a file, one process per call, outputs read back."""

    def __init__(self, executable: Path, manifest: dict[str, Any]):
        self.executable = executable
        self.inputs = manifest["inputs"]
        self.outputs = manifest["outputs"]

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [o[0] for o in self.run_samples([x[None] for x in inputs])]

    def run_samples(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Many samples in one simulation: each input with a leading sample axis."""
        import subprocess
        import tempfile

        count = len(inputs[0])
        flat = np.concatenate([np.asarray(x, np.float32).reshape(count, -1) for x in inputs],
                              axis=1)
        with tempfile.TemporaryDirectory(prefix="honer-csim-") as tmp:
            src, dst = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
            flat.tofile(src)
            proc = subprocess.run([str(self.executable), str(src), str(dst)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise ArtifactError(f"C simulation failed (exit {proc.returncode}): "
                                    f"{proc.stderr.strip()[-500:]}")
            out = np.fromfile(dst, np.float32).reshape(count, -1)
        results, offset = [], 0
        for spec in self.outputs:
            size = int(np.prod(spec["shape"], dtype=np.int64))
            results.append(out[:, offset:offset + size].reshape(count, *spec["shape"]))
            offset += size
        return results


def _open_hls_csim(path: Path, manifest: dict[str, Any], weights: list[np.ndarray]):
    return CSimRunner(listed_file(path, manifest, manifest["target"].get("executable")),
                      manifest)


FORMS: dict[str, Callable[[Path, dict[str, Any], list[np.ndarray]], Callable]] = {
    "relax-vm": _open_relax_vm,
    "relax-vm-cuda": _open_relax_vm_cuda,
    "hls-csim": _open_hls_csim,
    "aot-shared": open_aot_shared,
    "aot-exec": open_aot_exec,
}
