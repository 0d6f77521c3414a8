"""Pass registry, `"name:key=value,..."` spec parsing, and the pipeline runner."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from ..errors import HonerError, PassError
from ..ir import Graph, verify
from . import (
    act_fuse,
    bn_fold,
    dce,
    fold,
    layer_skip,
    linear_fold,
    qkv_merge,
    repvgg,
    sparse24,
    tome,
    w8a8,
    weight_quant,
)
from .base import Calibration, Evaluation, PassReport, output_error

PassSpec = str | tuple[str, Any]

# name -> module with `Config` and `run` (an explicit dict, no directory scanning)
REGISTRY: dict[str, ModuleType] = {
    "dce": dce,
    "fold": fold,
    "bn_fold": bn_fold,
    "repvgg": repvgg,
    "linear_fold": linear_fold,
    "qkv_merge": qkv_merge,
    "act_fuse": act_fuse,
    "layer_skip": layer_skip,
    "sparse24": sparse24,
    "tome": tome,
    "weight_quant": weight_quant,
    "w8a8": w8a8,
}

# names that stand for a sequence of passes, in the order their docstrings give
PRESETS: dict[str, tuple[str, ...]] = {
    "exact": ("fold", "bn_fold", "repvgg", "linear_fold", "qkv_merge", "act_fuse"),
}


def expand_presets(passes: Sequence[PassSpec]) -> list[PassSpec]:
    out: list[PassSpec] = []
    for spec in passes:
        if isinstance(spec, str) and spec.strip() in PRESETS:
            out += PRESETS[spec.strip()]
        else:
            out.append(spec)
    return out


def split_specs(text: str) -> list[str]:
    """'exact,tome:r=8,mode=prune' -> ['exact', 'tome:r=8,mode=prune']: a comma starts a new
    pass unless what follows is another key=value of the one before."""
    specs: list[str] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if specs and "=" in item and ":" not in item:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'tome:r=8,blocks=0-5' -> ('tome', {'r': '8', 'blocks': '0-5'})"""
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(";" if ";" in rest else ","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise PassError(name, f"option '{item}' must be key=value")
        options[key.strip()] = value.strip()
    return name, options


def make_config(name: str, options: dict[str, Any]) -> Any:
    module = _module(name)
    fields = {f.name: f for f in dataclasses.fields(module.Config)}
    unknown = set(options) - set(fields)
    if unknown:
        raise PassError(name, f"unknown option(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for key, raw in options.items():
        kwargs[key] = _coerce(name, key, raw, fields[key].type)
    return module.Config(**kwargs)


def _coerce(name: str, key: str, raw: Any, annotation: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = str(annotation)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
    except ValueError:
        raise PassError(name, f"option {key}={raw!r} is not a valid {kind}") from None
    return raw


def _module(name: str) -> ModuleType:
    try:
        return REGISTRY[name]
    except KeyError:
        raise PassError(name, f"unknown pass; known passes: {', '.join(REGISTRY)}") from None




def run_pipeline(graph: Graph, passes: Sequence[PassSpec], calib: Calibration | None = None,
                 progress: Callable[[str], None] | None = None,
                 evaluation: Evaluation | None = None) -> tuple[Graph, list[PassReport]]:
    """Runs passes in order, verifying the graph after each; returns the graph and reports.
    With `evaluation`, every approximate pass's report gets the task metric (top-1) of the
    graph before and after it."""
    reports = []
    metric: float | None = None  # of `graph`, computed when an approximate pass needs it
    for spec in expand_presets(passes):
        if isinstance(spec, str):
            name, options = parse_spec(spec)
            cfg = make_config(name, options)
        else:
            name, cfg = spec
        if progress:
            progress(f"pass {name}")
        start = time.perf_counter()
        try:
            result = _module(name).run(graph, cfg, calib)
            verify(result.graph)
        except HonerError:
            raise
        except Exception as e:
            raise PassError(name, f"{type(e).__name__}: {e}") from e
        result.report.effect.setdefault("seconds", round(time.perf_counter() - start, 3))
        if calib and not result.report.exact:  # what the approximation costs
            result.report.effect["output_error"] = output_error(graph, result.graph, calib)
        if evaluation is not None and not result.report.exact:
            metric = evaluation.top1(graph) if metric is None else metric
            after = evaluation.top1(result.graph)
            result.report.effect.update(top1_before=metric, top1_after=after)
            metric = after
        elif result.changed:
            metric = None
        reports.append(result.report)
        graph = result.graph
    return graph, reports
