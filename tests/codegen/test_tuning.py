"""MetaSchedule tuning: a real (short) tune, reuse of the database, the keep-the-faster rule,
and the database under concurrent and killed writers (real processes)."""

import json
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import honer
from honer.codegen.tuning import DB_FILE, TuneConfig, TuningDatabase


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 32)).eval()
    x = torch.randn(16, 64)
    db = tmp_path_factory.mktemp("db")
    # a budget far above what 8 trials on each of its few kernels take: the tune is complete;
    # kernels only, the batch left whole (tests/test_batch_split.py tunes the split)
    cfg = TuneConfig(db, budget_s=900, trials_per_round=8, rounds_per_kernel=1,
                     batch_split=False)
    compiled = honer.compile(model, (x,), tune=cfg)
    return model, x, db, compiled


def test_a_tune_records_every_kernel_it_tried_with_both_timings(tuned):
    _, _, db, compiled = tuned
    report = compiled.report["tuning"]
    assert report["kernels"], report
    for k in report["kernels"]:
        assert k["rules_ms"] > 0 and k["kept"] in ("tuned", "rules")
        if k["kept"] == "tuned":
            assert k["tuned_ms"] < k["rules_ms"]
    assert len(TuningDatabase(db).entries()) == len(report["kernels"])
    assert compiled.report["check"]["max_scaled_error"] <= 1e-5


def test_later_compiles_reuse_the_database_and_only_faster_kernels(tuned, tmp_path):
    model, x, db, compiled = tuned
    faster = sum(k["kept"] == "tuned" for k in compiled.report["tuning"]["kernels"])
    again = honer.compile(model, (x,), tune=TuneConfig(db, budget_s=0, batch_split=False))
    assert again.report["build"]["schedule"]["tuned"] == faster
    np.testing.assert_allclose(again(x.numpy()), model(x).detach().numpy(), rtol=1e-4,
                               atol=1e-5)
    retune = honer.compile(model, (x,), tune=TuneConfig(db, budget_s=30, batch_split=False))
    assert retune.report["tuning"]["kernels"] == []  # nothing left to tune
    assert retune.report["tuning"]["reused"] == len(compiled.report["tuning"]["kernels"])
    # the choice follows the recorded timings, whatever this run measured: with every tuned
    # schedule recorded faster all of them are built in (and still match eager), with every
    # one recorded slower none is
    entries = [e for e in TuningDatabase(db).entries() if e["record"] is not None]
    assert entries, "MetaSchedule found no valid schedule at all"
    for factor, used in ((0.5, len(entries)), (2.0, 0)):
        for e in entries:
            e["tuned_ms"] = e["rules_ms"] * factor
        forced = tmp_path / f"x{factor}"
        forced.mkdir()
        (forced / DB_FILE).write_text(json.dumps({"schema": "honer.tuning/1",
                                                  "entries": entries}))
        built = honer.compile(model, (x,), tune=TuneConfig(forced, budget_s=0,
                                                         batch_split=False))
        assert built.report["build"]["schedule"]["tuned"] == used
        np.testing.assert_allclose(built(x.numpy()), model(x).detach().numpy(), rtol=1e-4,
                                   atol=1e-5)


def test_a_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / DB_FILE).write_text("{not json")
    with pytest.raises(honer.HonerError, match="not valid JSON"):
        TuningDatabase(tmp_path).entries()


MERGER = textwrap.dedent("""
    import sys
    from honer.codegen.tuning import TuningDatabase
    db, tag, count = TuningDatabase(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for i in range(count):
        db.merge([{"target": "t", "workload": [tag, i], "record": None, "rules_ms": 1.0,
                   "tuned_ms": 2.0, "trials": 1, "padding": "x" * 20000}])
""")


def merger(db, tag, count):
    return subprocess.Popen([sys.executable, "-c", MERGER, str(db), tag, str(count)],
                            stderr=subprocess.PIPE, text=True)


def test_processes_sharing_the_database_lose_nothing_and_never_corrupt_it(tmp_path):
    procs = [merger(tmp_path, f"p{k}", 25) for k in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    keys = {tuple(e["workload"]) for e in TuningDatabase(tmp_path).entries()}
    assert keys == {(f"p{k}", i) for k in range(3) for i in range(25)}


def test_a_writer_killed_mid_merge_leaves_the_database_readable(tmp_path):
    rng = random.Random(1)
    for k in range(6):
        p = merger(tmp_path, f"k{k}", 10_000)
        time.sleep(rng.uniform(0.3, 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
        TuningDatabase(tmp_path).entries()  # raises if the file were half written
    assert merger(tmp_path, "last", 1).wait(timeout=300) == 0
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith(".tuning-")]
