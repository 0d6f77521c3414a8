"""Loads an artifact and runs it with numpy in and out. Imports neither torch nor onnx.

Each artifact form names how its compiled code runs. The `relax-vm` form runs the shared library
through TVM's runtime (imported lazily, only when such an artifact is loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError
from .artifact import WEIGHTS, read_manifest, read_weights


class LoadedModel:
    """A loaded artifact: call it with numpy arrays (positional or by input name)."""

    def __init__(self, path: Path, manifest: dict[str, Any], run: Callable[..., list]):
        self.path = path
        self.manifest = manifest
        self._run = run
        self.input_specs = manifest["inputs"]
        self.output_specs = manifest["outputs"]

    @property
    def input_names(self) -> list[str]:
        return [s["name"] for s in self.input_specs]

    @property
    def output_names(self) -> list[str]:
        return [s["name"] for s in self.output_specs]

    def run(self, *inputs: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        """Always returns the list of outputs."""
        return self._run(self._check(inputs, named))

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
            # documented conversion: non-contiguous or misaligned arrays are copied
            arrays.append(np.ascontiguousarray(x))
        return arrays


def load(path: str | Path) -> LoadedModel:
    """Checks the manifest and every file hash, then opens the compiled code."""
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
    return LoadedModel(path, manifest, opener(path, manifest, weights))


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
                and all(isinstance(d, int) and d >= 0 for d in s["shape"]) for s in specs):
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
    except ImportError as e:
        raise ArtifactError("this artifact runs on TVM's runtime; install apache-tvm") from e
    finally:
        if blocked and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def _open_relax_vm(path: Path, manifest: dict[str, Any], weights: list[np.ndarray]):
    tvm = _import_tvm_runtime()
    runtime = tvm.runtime
    device = runtime.device(manifest["target"]["device"], 0)
    lib = runtime.load_module(str(listed_file(path, manifest, manifest["target"]["library"])))
    vm = tvm.relax.VirtualMachine(lib, device)
    params = [_as_tvm_tensor(runtime, w, device) for w in weights]
    main = vm["main"]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        result = main(*[runtime.tensor(x, device) for x in inputs], *params)
        if isinstance(result, runtime.Tensor):
            return [result.numpy()]
        return [r.numpy() for r in result]

    return run


def _as_tvm_tensor(runtime: Any, array: np.ndarray, device: Any) -> Any:
    """Weights on the CPU are the mapped file itself (zero copy); other devices get one copy."""
    if device.dlpack_device_type() == 1 and array.size:  # kDLCPU
        return runtime.from_dlpack(array)
    return runtime.tensor(array, device)


FORMS: dict[str, Callable[[Path, dict[str, Any], list[np.ndarray]], Callable]] = {
    "relax-vm": _open_relax_vm,
}
