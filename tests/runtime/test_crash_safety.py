"""Crash safety and concurrency of artifact writes, with real processes killed or racing."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import onnx

from honer.runtime import artifact

# A writer that replaces `dest` round after round with 8 MB artifacts tagged by writer id.
WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from honer.runtime.artifact import write_artifact
    dest, tag, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for r in range(rounds):
        def fill(tmp):
            for k in range(8):
                with open(tmp / f"part{k}.bin", "wb") as f:
                    for _ in range(16):
                        f.write(os.urandom(1 << 16))
            return {"writer": tag, "round": r}
        write_artifact(dest, fill)
""")
CONV = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                    "pytorch-converted", "test_Conv2d", "model.onnx")


def start_writer(dest, tag, rounds):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(dest), tag, str(rounds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def scratch_left(dest):
    return [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")
            and not p.name.endswith(".lock")]


def test_a_writer_killed_at_any_moment_leaves_a_whole_artifact_or_none(tmp_path):
    dest = tmp_path / "model.honer"
    rng = random.Random(0)
    for _ in range(12):
        proc = start_writer(dest, "w", 1000)
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if dest.exists():
            assert artifact.read_manifest(dest)["writer"] == "w"  # whole, hashes intact
    # the next writer clears what the killed ones left
    assert start_writer(dest, "last", 1).wait() == 0
    assert artifact.read_manifest(dest)["writer"] == "last"
    assert scratch_left(dest) == []


def test_concurrent_writers_never_leave_the_destination_empty_or_broken(tmp_path):
    dest = tmp_path / "model.honer"
    assert start_writer(dest, "first", 1).wait() == 0
    writers = [start_writer(dest, f"w{k}", 6) for k in range(3)]
    gaps = 0
    while any(w.poll() is None for w in writers):
        gaps += not (dest / artifact.MANIFEST).exists()  # exchanged atomically: never absent
    results = [w.communicate() for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], [err for _, err in results]
    assert gaps == 0
    manifest = artifact.read_manifest(dest)
    assert manifest["writer"] in ("w0", "w1", "w2") and manifest["round"] == 5
    assert scratch_left(dest) == []


def test_a_killed_compile_leaves_no_partial_artifact(tmp_path):
    dest = tmp_path / "conv.honer"
    for delay in (1.0, 3.0):
        proc = subprocess.Popen([sys.executable, "-m", "honer", "compile", CONV, "-o",
                                 str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not dest.exists() or artifact.read_manifest(dest)
    done = subprocess.run([sys.executable, "-m", "honer", "compile", CONV, "-o", str(dest)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert artifact.read_manifest(dest) and scratch_left(dest) == []
