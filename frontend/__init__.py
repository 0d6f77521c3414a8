"""Frontends: capture a model into an ir.Graph. Torch and ONNX import lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import FrontendError
from ..ir import Graph


def capture(model: Any, example_inputs: Sequence[Any] | None = None) -> Graph:
    """Dispatches on the model's kind: torch module / ExportedProgram, ONNX path / ModelProto,
    or an ir.Graph built by hand (copied, so the caller's graph is never changed)."""
    if isinstance(model, Graph):
        return model.copy()
    if isinstance(model, str | Path):
        path = Path(model)
        if path.suffix != ".onnx":
            raise FrontendError(f"{path}: expected an .onnx file (for a torch model, pass the "
                                "module itself, or 'file.py:factory' on the command line)")
        from .onnx import from_onnx_file

        return from_onnx_file(path, example_inputs)
    kind = type(model).__module__ + "." + type(model).__name__
    if kind.startswith("onnx") and type(model).__name__ == "ModelProto":
        from .onnx import from_onnx

        return from_onnx(model, example_inputs)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module | torch.export.ExportedProgram):
        from .torch_export import from_torch

        return from_torch(model, example_inputs)
    raise FrontendError(f"cannot compile a {kind}: pass a torch.nn.Module, an "
                        "ExportedProgram, an ONNX ModelProto, a path to an .onnx file or an "
                        "ir.Graph")
