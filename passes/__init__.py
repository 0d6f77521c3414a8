"""Graph passes: one module per pass, a registry and the pipeline runner."""

from .base import Calibration, PassReport, PassResult
from .pipeline import REGISTRY, parse_spec, run_pipeline

__all__ = ["Calibration", "PassReport", "PassResult", "REGISTRY", "parse_spec", "run_pipeline"]
