"""Accuracy versus measured latency over a family of pass settings: the curve an approximate
pass is chosen from. `honer sweep` and the evaluation scripts use it.

Every point is compiled with honer for the same target and timed in turns with the
baseline (no approximate pass), so the speedups are ratios measured side by side. The metric
is what `evaluate(compiled)` returns (e.g. top-1 on a test set; a dict adds more columns to
the row beside its "metric"); without one, the output error
against the baseline on the example inputs stands in. Saves `<name>.json`, a `.csv` table
and a `.png` plot.
"""

from __future__ import annotations

import csv
import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import harness

Point = tuple[str, list[str]]  # (label, pass specs)


def parse_values(text: str) -> list[str]:
    """'1,2,4' as given; '0-8' every integer; '0-16:4' every 4th."""
    if "," in text or "-" not in text:
        return [v.strip() for v in text.split(",") if v.strip()]
    span, _, step = text.partition(":")
    lo, _, hi = span.partition("-")
    try:
        return [str(v) for v in range(int(lo), int(hi) + 1, int(step or 1))]
    except ValueError:
        raise InputError(f"--values {text!r}: give 1,2,4 or a range like 0-8 or 0-16:4") \
            from None


def points_for(template: str, values: Sequence[str], base: Sequence[str] = ()) -> list[Point]:
    """The baseline, then one point per value: `tome:r={}` with 4 -> `tome:r=4`."""
    if "{}" not in template:
        raise ValueError(f"pass template {template!r} needs a {{}} where the value goes")
    points = [("baseline", list(base))]
    for v in values:
        if str(v) not in ("0", ""):
            points.append((str(v), [*base, template.format(v)]))
    return points


def run_sweep(model: Any, example: Sequence[Any], points: Sequence[Point],
              evaluate: Callable[[Any], float | dict] | None = None, calibration: Any = None,
              target: str = "host", runs: int = 30,
              say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Compiles and evaluates every point, then times them all in turns (`runs` calls each,
    in rounds): a slow spell of a shared machine falls on every point alike, so the speedups
    stay ratios measured side by side."""
    import honer

    arrays = [np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in example]
    rows: list[dict[str, Any]] = []
    compiled_points: list[Any] = []
    base_out = None
    for label, passes in points:
        compiled = honer.compile(model, example, target=target, passes=passes,
                                 calibration=calibration, check=False)
        out = compiled(*arrays)
        out = out[0] if isinstance(out, list | tuple) else out
        base_out = out if base_out is None else base_out
        flops = [r["effect"] for r in compiled.report["passes"]
                 if "flops_before" in r.get("effect", {})]
        scores = evaluate(compiled) if evaluate is not None else {"metric": None}
        scores = scores if isinstance(scores, dict) else {"metric": float(scores)}
        rows.append({"label": label, "passes": passes, **scores,
                     "output_error": float(np.abs(out - base_out).max()
                                           / max(np.abs(base_out).max(), 1e-30)),
                     "flops_ratio": round(flops[0]["flops_before"] / flops[-1]["flops_after"], 3)
                     if flops else 1.0,
                     "effects": {r["name"]: r["effect"] for r in compiled.report["passes"]}})
        compiled_points.append(compiled)
        say(f"{label}: metric {rows[-1]['metric']}, FLOPs ratio {rows[-1]['flops_ratio']}")
    timings = harness.measure_in_turns(
        {str(i): (lambda c=c: c(*arrays)) for i, c in enumerate(compiled_points)}, runs)
    base_ms = timings["0"].median_ms
    for i, row in enumerate(rows):
        ms = timings[str(i)].median_ms
        row.update(median_ms=round(ms, 4), speedup=round(base_ms / ms, 3))
        say(f"{row['label']}: {row['median_ms']} ms, speedup {row['speedup']}")
    return rows


COLUMNS = ["label", "metric", "output_error", "median_ms", "speedup", "flops_ratio"]


def summary(rows: Sequence[dict[str, Any]], metric_name: str = "metric") -> str:
    header = [metric_name if c == "metric" else c for c in COLUMNS]
    return harness.table([[r[c] if r[c] is not None else "-" for c in COLUMNS] for r in rows],
                         header)


def save_curve(path: Path, curves: dict[str, Sequence[dict[str, Any]]], title: str,
               metric_name: str = "metric", extra: dict[str, Any] | None = None) -> list[Path]:
    """Writes path.json (every row, the environment), path.csv and path.png (metric, or the
    output error when there is no metric, against the measured speedup; one line per curve)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": harness.environment(), "title": title, "metric": metric_name,
               **(extra or {}), "curves": curves}
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    csv_path = path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["curve", *COLUMNS, "passes"])
        for name, rows in curves.items():
            for r in rows:
                writer.writerow([name, *(r[c] for c in COLUMNS), " ".join(r["passes"])])
    png_path = path.with_suffix(".png")
    _plot(png_path, curves, title, metric_name)
    return [json_path, csv_path, png_path]


def replot(json_path: Path) -> Path:
    """Draws a saved curve's PNG again from its JSON."""
    data = json.loads(json_path.read_text())
    png = json_path.with_suffix(".png")
    _plot(png, data["curves"], data["title"], data["metric"])
    return png


def _plot(path: Path, curves: dict[str, Sequence[dict[str, Any]]], title: str,
          metric_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, rows in curves.items():
        use_metric = all(r["metric"] is not None for r in rows)
        ys = [r["metric"] if use_metric else r["output_error"] for r in rows]
        xs = [r["speedup"] for r in rows]
        ax.plot(xs, ys, "o-", label=name)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(3, 3),
                        fontsize=7)
    ax.set_xlabel("measured speedup over the baseline (same run)")
    ax.set_ylabel(metric_name if all(r["metric"] is not None for rows in curves.values()
                                     for r in rows) else "max output error / scale")
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def top1(inputs: Sequence[np.ndarray], labels: np.ndarray,
         batch: int) -> Callable[[Any], float]:
    """An `evaluate` for classifiers: top-1 of the first output's argmax, run `batch` rows at
    a time (the batch the model was compiled for; the last batch is padded by repeating its
    first row, and only real rows count)."""
    def evaluate(compiled: Any) -> float:
        correct = 0
        for i in range(0, len(labels), batch):
            rows = [x[i:i + batch] for x in inputs]
            real = len(rows[0])
            rows = [np.concatenate([r, np.repeat(r[:1], batch - real, 0)]) for r in rows]
            out = compiled(*rows)
            out = out[0] if isinstance(out, list | tuple) else out
            correct += int((out.reshape(batch, -1)[:real].argmax(1)
                            == labels[i:i + real]).sum())
        return correct / len(labels)

    return evaluate
