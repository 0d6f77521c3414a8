"""honer: an ahead-of-time compiler and graph optimizer for neural networks, on Apache TVM.

`honer.load` needs only numpy (and the runtime of the artifact's form); `honer.compile` pulls
in the compiler (TVM, and torch or onnx for the model) on first use.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    ArtifactError,
    BuildError,
    CodegenError,
    FrontendError,
    HonerError,
    InputError,
    IRError,
    PassError,
    ToolchainError,
    UnsupportedOpError,
)
from .runtime.loader import LoadedModel, load

__version__ = "0.1.0"


def compile(*args: Any, **kwargs: Any) -> Any:  # noqa: A001
    """See honer.api.compile (imported lazily so `honer.load` stays light)."""
    from .api import compile as _compile

    return _compile(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "TuneConfig":  # tuning settings for compile(tune=...); imports TVM
        from .codegen.tuning import TuneConfig

        return TuneConfig
    raise AttributeError(f"module 'honer' has no attribute {name!r}")


__all__ = ["compile", "TuneConfig", "load", "LoadedModel", "HonerError", "UnsupportedOpError",
           "FrontendError", "IRError", "PassError", "CodegenError", "ToolchainError",
           "BuildError", "ArtifactError", "InputError"]
