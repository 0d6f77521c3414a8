"""MetaSchedule tuning under a time budget, with a persistent database that compiles reuse.

Each fused kernel of a model (the PrimFuncs honer's CPU rules would schedule) is a task.
Every task is first timed under the rules; tasks are tuned one at a time in the order of the
time they take in the model (rule time x occurrences; those under `min_share` are left to the
rules), in rounds of `trials_per_round` MetaSchedule
trials until the budget is spent. After each task, the best tuned schedule and honer's rule
schedule are timed side by side here, and the database keeps both figures: a compile uses the
tuned schedule only where it was measured faster, so tuning never makes a kernel slower.

The database is one JSON file (`tuning.json` in the database directory) keyed by target and
workload (MetaSchedule's structural identity of the kernel). Writers hold an exclusive file
lock, re-read the file, merge, and replace it by rename, so compiles and tunes sharing it at
once, or killed halfway, never leave it corrupt.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx

from ..errors import BuildError, HonerError
from ..runtime.artifact import file_lock

SCHEMA = "honer.tuning/1"
DB_FILE = "tuning.json"
BATCH_FILE = "batch_split.json"  # whole-model choices: micro-batch size per model and target


@dataclass(frozen=True)
class TuneConfig:
    database: Path  # directory holding tuning.json; shared by every compile that names it
    budget_s: float = 600.0  # wall-clock seconds for the whole model
    trials_per_round: int = 32  # MetaSchedule trials per round on one kernel
    rounds_per_kernel: int = 4  # a kernel gets at most this many rounds per tune
    min_share: float = 0.01  # kernels below this share of the model's kernel time are left out
    # also time the model with its batch split into micro-batches (ir/batch_split.py), under
    # the rules, and keep the fastest; the choice is recorded, and compiles that only read the
    # database reuse it
    batch_split: bool = True


# ---- the database --------------------------------------------------------------------------


class TuningDatabase:
    """Entries: {"target", "workload", "record" (MetaSchedule JSON or null), "rules_ms",
    "tuned_ms", "trials"}; one per (target, workload)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        return file_lock(self.path / ".lock")

    def _read(self, name: str = DB_FILE) -> Any:
        """The file's records: the kernel entries (a list), or the batch-split choices (a
        dict by key)."""
        file = self.path / name
        if not file.exists():
            return [] if name == DB_FILE else {}
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HonerError(f"tuning database {file} is not valid JSON ({e}); move it away "
                             "to start a new one") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise HonerError(f"{file} is not a honer tuning database ({SCHEMA})")
        return data["entries"]

    def _write(self, entries: Any, name: str = DB_FILE) -> None:
        """Replaces the file by rename (the lock held): readers see the old or the new."""
        body = json.dumps({"schema": SCHEMA, "entries": entries})
        for stale in self.path.glob(".tuning-*"):  # only a killed writer leaves these:
            stale.unlink(missing_ok=True)          # a live one would hold the lock
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", dir=self.path)
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / name)

    def batch_split(self, key: str) -> dict[str, Any] | None:
        """The batch-split choice recorded for `key` (model, target, batch), if any."""
        with self._locked():
            return self._read(BATCH_FILE).get(key)

    def record_batch_split(self, key: str, choice: dict[str, Any]) -> None:
        with self._locked():
            choices = self._read(BATCH_FILE)
            choices[key] = choice
            self._write(choices, BATCH_FILE)

    def entries(self) -> list[dict[str, Any]]:
        with self._locked():
            return self._read()

    def merge(self, new: list[dict[str, Any]]) -> None:
        """Adds or improves entries: per key, the entry with more trials wins."""
        with self._locked():
            entries = {_key(e): e for e in self._read()}
            for e in new:
                old = entries.get(_key(e))
                if old is None or e["trials"] >= old["trials"]:
                    entries[_key(e)] = e
            self._write(list(entries.values()))


def _key(entry: dict[str, Any]) -> str:
    return entry["target"] + "\n" + json.dumps(entry["workload"], sort_keys=True)


def _target_key(target: tvm.target.Target) -> str:
    return str(target)


class TunedKernels:
    """What a compile asks: the tuned schedule of a kernel, where tuning beat the rules."""

    def __init__(self, database: TuningDatabase, target: tvm.target.Target):
        ms = _meta_schedule()
        self.target = target
        self._db = ms.database.MemoryDatabase()
        key = _target_key(target)
        for e in database.entries():
            if e["target"] == key and e["tuned_ms"] is not None and e["tuned_ms"] < e["rules_ms"]:
                workload = ms.database.Workload.from_json(e["workload"])
                self._db.commit_workload(workload.mod)
                self._db.commit_tuning_record(
                    ms.database.TuningRecord.from_json(e["record"], workload))

    def schedule(self, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        sch = self._db.query_schedule(_as_module(func), self.target, workload_name="main")
        return None if sch is None else sch.mod["main"]


# ---- tuning -------------------------------------------------------------------------------


@dataclass
class KernelResult:
    name: str
    trials: int
    rules_ms: float
    tuned_ms: float | None  # None when no valid tuned schedule was found

    @property
    def kept(self) -> str:
        return "tuned" if self.tuned_ms is not None and self.tuned_ms < self.rules_ms \
            else "rules"


@dataclass
class TuneReport:
    seconds: float = 0.0
    reused: int = 0  # kernels already in the database
    skipped: int = 0  # kernels below min_share of the kernel time, left to the rules
    kernels: list[KernelResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1), "reused": self.reused,
                "skipped": self.skipped,
                "kernels": [{"name": k.name, "trials": k.trials, "rules_ms": k.rules_ms,
                             "tuned_ms": k.tuned_ms, "kept": k.kept} for k in self.kernels]}


@dataclass
class _Task:
    name: str
    func: tirx.PrimFunc  # unscheduled
    by_rules: tirx.PrimFunc  # the same kernel under honer's rules
    calls: int  # how often the model runs it
    rules_ms: float

    @property
    def cost_ms(self) -> float:
        return self.calls * self.rules_ms


class _Budget:
    """Wall-clock budget: a round starts only if the time left fits a round as long as the
    longest one so far, so tuning ends close to the budget instead of one round past it."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.longest_round = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows_round(self) -> bool:
        return self.left() > self.longest_round

    @contextlib.contextmanager
    def round(self) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.longest_round = max(self.longest_round, time.monotonic() - start)


def tune_kernels(funcs: dict[str, tirx.PrimFunc], target: tvm.target.Target,
                 rules: Callable[[tirx.PrimFunc], tirx.PrimFunc], cfg: TuneConfig,
                 progress: Callable[[str], None] = lambda msg: None,
                 calls: dict[str, int] | None = None) -> TuneReport:
    """Tunes the kernels in `funcs` (name -> unscheduled PrimFunc) not yet in the database;
    `calls` says how often the model calls each (once each if not given)."""
    ms = _meta_schedule()
    start = time.monotonic()
    budget = _Budget(cfg.budget_s)
    database = TuningDatabase(cfg.database)
    known = {_key(e): e for e in database.entries()}
    report = TuneReport()
    todo, total = [], 0.0  # total: the whole model's kernel time under the rules
    for name, (func, calls_) in _unique(funcs, calls or {}).items():
        entry = known.get(_key({"target": _target_key(target),
                                "workload": ms.database.Workload(_as_module(func)).as_json()}))
        if entry is not None:  # its rule timing is on record
            report.reused += 1
            total += calls_ * entry["rules_ms"]
            continue
        by_rules = rules(func)
        todo.append(_Task(name, func, by_rules, calls_, measure_kernel(by_rules, target)))
        total += todo[-1].cost_ms
    # tune where the time goes under the rules; kernels below min_share are not worth a round
    # (of the model's time, tuned kernels included: a retune does not take up the leftovers)
    todo.sort(key=lambda t: -t.cost_ms)
    worth = [t for t in todo if t.cost_ms >= cfg.min_share * total]
    report.skipped = len(todo) - len(worth)
    for k, task in enumerate(worth):
        if not budget.allows_round():
            break
        progress(f"tuning kernel {k + 1}/{len(worth)} {task.name} (x{task.calls}, "
                 f"{100 * task.cost_ms / total:.0f}% of kernel time; "
                 f"{budget.left():.0f} s left)")
        result, entry = _tune_one(task, target, cfg, budget)
        report.kernels.append(result)
        database.merge([entry])  # saved as we go: an interrupted tune keeps what it found
        progress(f"  {task.name}: rules {result.rules_ms:.3f} ms, tuned "
                 f"{_fmt(result.tuned_ms)} ms after {result.trials} trials -> {result.kept}")
    report.seconds = time.monotonic() - start
    return report


def _tune_one(task: _Task, target: tvm.target.Target, cfg: TuneConfig,
              budget: _Budget) -> tuple[KernelResult, dict[str, Any]]:
    ms = _meta_schedule()
    mod = _as_module(task.func)
    memory = ms.database.MemoryDatabase()
    trials = 0
    with tempfile.TemporaryDirectory(prefix="honer-tune-") as work:
        for r in range(cfg.rounds_per_kernel):
            if r > 0 and not budget.allows_round():
                break
            trials += cfg.trials_per_round
            context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                                     search_strategy="evolutionary", task_name=task.name,
                                     num_threads="physical")
            with budget.round(), _quiet():
                ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=work,
                              max_trials_global=trials, num_trials_per_iter=cfg.trials_per_round,
                              builder=ms.builder.LocalBuilder(f_build=build_candidate),
                              runner="local", database=memory)
    record = _best(memory, mod, target)
    tuned_ms = None
    if record is not None:
        sch = memory.query_schedule(mod, target, workload_name="main")
        rules_ms, tuned_ms = compare_kernels(task.by_rules, sch.mod["main"], target)
    else:
        rules_ms = task.rules_ms
    entry = {"target": _target_key(target), "workload": ms.database.Workload(mod).as_json(),
             "record": record.as_json() if record is not None else None,
             "rules_ms": rules_ms, "tuned_ms": tuned_ms, "trials": trials}
    return KernelResult(task.name, trials, rules_ms, tuned_ms), entry


def _best(memory: Any, mod: tvm.IRModule, target: tvm.target.Target) -> Any:
    if not memory.has_workload(mod):
        return None
    top = memory.get_top_k(memory.commit_workload(mod), 1)
    return top[0] if top else None


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """MetaSchedule's builder function without its tensor-intrinsic import (which registers
    CUDA, ROCm and Hexagon intrinsics and takes over a minute in every builder process)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def compare_kernels(a: tirx.PrimFunc, b: tirx.PrimFunc, target: tvm.target.Target,
                    rounds: int = 3) -> tuple[float, float]:
    """Best-of-`rounds` milliseconds of two schedules of one kernel, measured alternately so a
    machine that gets busy meanwhile slows both alike instead of favouring one."""
    timers = (_kernel_timer(a, target), _kernel_timer(b, target))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for timer, out in zip(timers, times):
            out.append(timer())
    return min(times[0]), min(times[1])


def measure_kernel(func: tirx.PrimFunc, target: tvm.target.Target) -> float:
    """Median milliseconds of one call of `func` on random inputs, built here."""
    return _kernel_timer(func, target)()


def _kernel_timer(func: tirx.PrimFunc, target: tvm.target.Target,
                  repeat: int = 7) -> Callable[[], float]:
    """Builds `func` once; the returned function times it (median ms) on random inputs."""
    ms = _meta_schedule()
    try:
        lib = tvm.tirx.build(_as_module(func), target=target)
    except Exception as e:  # noqa: BLE001 - a schedule that does not build is a tuning miss
        raise BuildError(f"kernel does not build: {str(e).splitlines()[-1]}") from e
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        shape, dtype = [int(d) for d in info.shape], str(info.dtype)
        data = rng.standard_normal(shape) if "float" in dtype else rng.integers(0, 2, shape)
        args.append(tvm.runtime.tensor(np.asarray(data).astype(dtype), dev))
    timer = lib.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=40)
    return lambda: float(np.median(timer(*args).results)) * 1e3


# ---- helpers ------------------------------------------------------------------------------


def _meta_schedule() -> Any:
    _light_tensor_intrinsics()
    import tvm.s_tir.meta_schedule as ms

    return ms


def _light_tensor_intrinsics() -> None:
    """MetaSchedule imports `tvm.s_tir.tensor_intrin`, whose package init registers every
    device's intrinsics (75 s here, 52 of them CUDA). A CPU target needs none of that: stand in
    an empty package whose submodules still import on demand. The CPU ones are imported
    (1.6 s): MetaSchedule's default x86 and ARM rules look their dot-product intrinsics up by
    name, and without them a fresh process failed to tune on a VNNI CPU ("TensorIntrin
    'dot_16x4_vnni' is not registered")."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules[name] = package
    for cpu in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{cpu}")


def _as_module(func: tirx.PrimFunc) -> tvm.IRModule:
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _unique(funcs: dict[str, tirx.PrimFunc],
            calls: dict[str, int]) -> dict[str, tuple[tirx.PrimFunc, int]]:
    """Structurally distinct kernels, each with the number of calls it serves."""
    out: dict[str, tuple[tirx.PrimFunc, int]] = {}
    for name, func in sorted(funcs.items()):
        n_calls = max(calls.get(name, 1), 1)
        same = next((n for n, (seen, _) in out.items()
                     if tvm_ffi.structural_equal(func, seen)), None)
        if same is None:
            out[name] = (func, n_calls)
        else:
            out[same] = (out[same][0], out[same][1] + n_calls)
    return out


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MetaSchedule logs every round to stdout from C++; honer shows its own progress."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
