"""Runs standalone artifacts (honer's C runtime, no TVM): in-process through ctypes when the
library is built for this machine (form aot-shared), or through the artifact's command-line
driver, under the emulator its manifest names when built for another machine (aot-exec)."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, HonerError
from .artifact import WEIGHTS

ALIGN = 64


class _Model(ctypes.Structure):
    """The leading fields of honer_model_t (runtime/honer_rt.h)."""
    _fields_ = [("num_inputs", ctypes.c_int32), ("num_outputs", ctypes.c_int32),
                ("num_tensors", ctypes.c_int32), ("num_calls", ctypes.c_int32),
                ("num_copies", ctypes.c_int32),
                ("input_nbytes", ctypes.POINTER(ctypes.c_uint64)),
                ("output_nbytes", ctypes.POINTER(ctypes.c_uint64)),
                ("arena_bytes", ctypes.c_uint64), ("weights_bytes", ctypes.c_uint64)]


def aligned_empty(shape: Any, dtype: Any) -> np.ndarray:
    """An uninitialized array whose data is 64-byte aligned (kernels may assume it)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _aligned(x: np.ndarray) -> np.ndarray:
    if x.ctypes.data % ALIGN == 0:
        return x
    copy = aligned_empty(x.shape, x.dtype)
    copy[...] = x
    return copy


def _aot_facts(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's standalone facts; the weight layout baked into the code must be the one
    the weights file has, or the model would read wrong bytes."""
    aot = manifest["target"].get("aot")
    if not isinstance(aot, dict) or not isinstance(aot.get("weights"), list) \
            or not isinstance(aot.get("arena_bytes"), int):
        raise ArtifactError(f"{path}: malformed manifest: 'target.aot' must give the arena size "
                            "and the weight layout")
    stored = [[w["offset"], w["nbytes"]] for w in manifest.get("weights", [])]
    if stored != aot["weights"]:
        raise ArtifactError(f"{path}: {WEIGHTS} is laid out differently from what the compiled "
                            "model reads (rebuild the artifact)")
    return aot


def _weights_buffer(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    from .loader import listed_file

    if not manifest.get("weights"):
        return aligned_empty((ALIGN,), np.uint8)
    file = listed_file(path, manifest, WEIGHTS)
    return np.memmap(file, dtype=np.uint8, mode="r")  # page aligned, shared with other loads


def _pointers(arrays: list[np.ndarray]) -> Any:
    return (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])


class SharedLibRunner:
    """The model's shared library in this process: numpy arrays in, numpy arrays out."""

    def __init__(self, library: Path, manifest: dict[str, Any], weights: np.ndarray,
                 aot: dict[str, Any]):
        self.lib = ctypes.CDLL(os.fspath(library))  # RTLD_LOCAL: its symbols stay its own
        self.lib.honer_run.argtypes = [ctypes.c_void_p] * 4
        self.lib.honer_run.restype = ctypes.c_int
        self.lib.honer_last_error.restype = ctypes.c_char_p
        self.lib.honer_set_num_threads.argtypes = [ctypes.c_int]
        self.lib.honer_model.restype = ctypes.POINTER(_Model)
        self.outputs = manifest["outputs"]
        self.weights = weights
        self._check_signature(library, manifest, aot)
        self.arena = aligned_empty((max(1, aot["arena_bytes"]),), np.uint8)

    def _check_signature(self, library: Path, manifest: dict[str, Any],
                         aot: dict[str, Any]) -> None:
        model = self.lib.honer_model().contents
        got = ([model.input_nbytes[i] for i in range(model.num_inputs)],
               [model.output_nbytes[i] for i in range(model.num_outputs)], model.arena_bytes)
        want = ([_nbytes(s) for s in manifest["inputs"]],
                [_nbytes(s) for s in manifest["outputs"]], aot["arena_bytes"])
        if got != want or model.weights_bytes > self.weights.size:
            raise ArtifactError(f"{library}: the library's inputs, outputs or memory plan do "
                                "not match the manifest (or weights.bin is too short)")

    def profile(self, inputs: list[np.ndarray], runs: int = 10) -> list[tuple[str, float]]:
        """Milliseconds per run spent in each kernel call, in call order: (kernel, ms)."""
        model = self.lib.honer_model()
        calls = model.contents.num_calls
        self.lib.honer_call_name.restype = ctypes.c_char_p
        self.lib.honer_call_name.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        counters = np.zeros(calls, np.uint64)
        self.lib.honer_profile(counters.ctypes.data_as(ctypes.c_void_p))
        try:
            for _ in range(runs):
                self(inputs)
        finally:
            self.lib.honer_profile(None)
        handle = ctypes.cast(model, ctypes.c_void_p)
        return [(self.lib.honer_call_name(handle, c).decode(), counters[c] / runs / 1e6)
                for c in range(calls)]

    def set_num_threads(self, n: int) -> int:
        """Threads its parallel kernels use (0: one per available core); returns the count."""
        return int(self.lib.honer_set_num_threads(n))

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        inputs = [_aligned(x) for x in inputs]
        outputs = [aligned_empty(s["shape"], s["dtype"]) for s in self.outputs]
        rc = self.lib.honer_run(_pointers(inputs), _pointers(outputs),
                                self.weights.ctypes.data, self.arena.ctypes.data)
        if rc != 0:
            raise HonerError(f"the model failed: {self.lib.honer_last_error().decode()}")
        return outputs


def _nbytes(spec: dict[str, Any]) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize


class DriverRunner:
    """The artifact's command-line driver, one process per call: inputs and outputs pass
    through files. Runs natively on its own kind of machine, emulated elsewhere."""

    def __init__(self, driver: Path, weights: Path, manifest: dict[str, Any], launcher: list):
        self.command = [*launcher, os.fspath(driver), os.fspath(weights)]
        self.outputs = manifest["outputs"]

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="honer-run-") as tmp:
            src, dst = Path(tmp) / "inputs.bin", Path(tmp) / "outputs.bin"
            src.write_bytes(b"".join(np.ascontiguousarray(x).tobytes() for x in inputs))
            proc = subprocess.run([*self.command, os.fspath(src), os.fspath(dst)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise HonerError(f"the model failed (exit {proc.returncode}): "
                                 f"{proc.stderr.strip()[-500:]}")
            raw = dst.read_bytes()
        outs, at = [], 0
        for spec in self.outputs:
            n = _nbytes(spec)
            outs.append(np.frombuffer(raw[at:at + n], spec["dtype"]).reshape(spec["shape"]))
            at += n
        return outs


def open_aot_shared(path: Path, manifest: dict[str, Any], weights: list[np.ndarray]):
    from .loader import listed_file

    aot = _aot_facts(path, manifest)
    if aot.get("machine") not in (None, platform.machine()):
        raise ArtifactError(f"{path}: built for {aot['machine']}, this machine is "
                            f"{platform.machine()}")
    library = listed_file(path, manifest, manifest["target"].get("library"))
    return SharedLibRunner(library, manifest, _weights_buffer(path, manifest), aot)


def open_aot_exec(path: Path, manifest: dict[str, Any], weights: list[np.ndarray]):
    from .loader import listed_file

    aot = _aot_facts(path, manifest)
    driver = listed_file(path, manifest, aot.get("executable"))
    if not os.access(driver, os.X_OK):
        raise ArtifactError(f"{path}: {driver.name} is not executable")
    launcher: list[str] = []
    emulator = aot.get("emulator") or []
    if aot.get("machine") != platform.machine():
        if not emulator or not isinstance(emulator, list) or shutil.which(emulator[0]) is None:
            hint = aot.get("emulator_hint") or "an emulator for it"
            raise ArtifactError(f"{path}: built for {aot.get('machine')}; running it here "
                                f"({platform.machine()}) needs {hint}")
        launcher = [str(a) for a in emulator]
    # a model without weights still takes a (then empty) weights file
    weights_file = listed_file(path, manifest, WEIGHTS) if manifest.get("weights") \
        else Path(os.devnull)
    return DriverRunner(driver, weights_file, manifest, launcher)
