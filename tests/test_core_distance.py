"""benchmarks/core_distance: its probe measures a round trip between two CPUs, and the turns
are grouped by it; results files (benchmarks/harness.save)."""

import math
import os
import shutil

import pytest

from honer.benchmarks import core_distance


def test_probe_reports_a_round_trip(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the probe needs two CPUs")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    ns = core_distance.round_trip_ns(core_distance.build_probe(tmp_path))
    assert math.isfinite(ns) and 1 < ns < 1e6


def test_turns_are_grouped_by_the_round_trip():
    turns = [{"round_trip_ns": ns, "ms": {"honer": h, "onnxruntime": o}}
             for ns, h, o in [(80, 16, 17), (120, 17, 18), (150, 15, 17), (650, 23, 18),
                              (700, 21, 19)]]
    near, far = core_distance.by_placement(turns)
    assert (near["placement"], near["turns"], near["round_trip_ns"]) == ("near", 3, 120)
    assert near["median_ms"] == {"honer": 16, "onnxruntime": 17}
    assert (far["placement"], far["turns"], far["median_ms"]["honer"]) == ("far", 2, 22)


def test_no_far_turns_leaves_one_group():
    turns = [{"round_trip_ns": 90, "ms": {"honer": 1.0, "onnxruntime": 2.0}}]
    assert [g["placement"] for g in core_distance.by_placement(turns)] == ["near"]


def test_results_go_where_out_says(tmp_path):
    from honer.benchmarks import harness

    for name in ("run", "run.json"):
        path = harness.save(str(tmp_path / "sub" / name), {"rows": []})
        assert path == tmp_path / "sub" / "run.json" and path.exists()
