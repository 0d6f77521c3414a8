"""Artifact format and loader: numpy, ctypes and the standard library only."""

from .artifact import read_manifest
from .loader import LoadedModel, load

__all__ = ["LoadedModel", "load", "read_manifest"]
