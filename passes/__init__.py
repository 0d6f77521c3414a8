"""Graph passes: one module per pass, a registry and the pipeline runner."""

from .base import Calibration, Evaluation, PassReport, PassResult
from .pipeline import REGISTRY, parse_spec, run_pipeline

__all__ = ["Calibration", "Evaluation", "PassReport", "PassResult", "REGISTRY", "parse_spec",
           "run_pipeline"]
