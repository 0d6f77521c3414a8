"""The pass interface shared by every pass (see DESIGN.md, "Passes")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir import Graph, interpret


@dataclass
class Calibration:
    """User data for calibrating approximate passes: a list of input tuples."""

    samples: list[tuple[np.ndarray, ...]]


def output_error(before: Graph, after: Graph, calib: Calibration) -> float:
    """Max |after - before| of the first output on the first calibration sample, relative to
    the largest |before|."""
    want = interpret(before, list(calib.samples[0]))[0]
    got = interpret(after, list(calib.samples[0]))[0]
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@dataclass
class Evaluation:
    """Labeled data for the task metric in the pass reports: input tuples, and for each the
    labels of its rows. The metric is top-1: the first output's argmax over its last axis."""

    samples: list[tuple[np.ndarray, ...]]
    labels: list[np.ndarray]

    def top1(self, graph: Graph) -> float:
        correct = total = 0
        for sample, labels in zip(self.samples, self.labels):
            predicted = interpret(graph, list(sample))[0].argmax(-1)
            correct += int((predicted.reshape(labels.shape) == labels).sum())
            total += labels.size
        return correct / max(total, 1)


@dataclass
class PassReport:
    name: str
    config: dict[str, Any]
    matches: int = 0
    rejections: list[dict[str, str]] = field(default_factory=list)  # {"where", "reason"}
    effect: dict[str, Any] = field(default_factory=dict)
    exact: bool = True

    def reject(self, where: str, reason: str) -> None:
        self.rejections.append({"where": where, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "matches": self.matches,
                "rejections": self.rejections, "effect": self.effect, "exact": self.exact}


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    report: PassReport
