"""Peak memory of compiling and of loading a model with about 1 GB of weights.

Builds an ONNX MLP (16 Gemm layers of 4096x4096 fp32 = 1.07 GB), compiles it with the `honer`
command and loads + runs the artifact, each in its own process; peak RSS comes from the kernel
(wait4's ru_maxrss), and the loader reports how much of its memory is anonymous (copies) versus
file-backed (the mapped weight file, shared with the page cache).

    python -m honer.benchmarks.memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .harness import save, table

LAYERS, WIDTH, BATCH = 16, 4096, 4

LOAD_AND_RUN = f"""
import json, sys, numpy as np, honer
m = honer.load(sys.argv[1])
m(np.ones(({BATCH}, {WIDTH}), np.float32))
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({{k: int(status[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}}))
"""


def build_model(path: Path) -> int:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH), np.float32) / 64).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"),
                  numpy_helper.from_array(np.zeros(WIDTH, np.float32), f"b{k}")]
        nodes += [helper.make_node("Gemm", [x, f"w{k}", f"b{k}"], [f"g{k}"], transB=1),
                  helper.make_node("Relu", [f"g{k}"], [f"h{k}"])]
        x = f"h{k}"
    graph = helper.make_graph(
        nodes, "big_mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                         [BATCH, WIDTH])],
        [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [BATCH, WIDTH])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return sum(int(np.prod(t.dims)) * 4 for t in inits)


def peak_rss(cmd: list[str]) -> tuple[int, str]:
    """Runs `cmd`; its peak resident set size in bytes and its stdout."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
        out.seek(0)
        return usage.ru_maxrss * 1024, out.read().decode()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--build":  # the child that writes the model
        print(build_model(Path(sys.argv[2])))
        return
    # every step runs in a child of this small process: Linux carries a parent's peak RSS
    # into the children it forks, so building the model here would inflate every figure
    with tempfile.TemporaryDirectory(prefix="honer-mem-") as tmp:
        model, art = Path(tmp) / "big.onnx", Path(tmp) / "big.honer"
        py = sys.executable
        _, out = peak_rss([py, "-m", "honer.benchmarks.memory", "--build", str(model)])
        weights = int(out.strip().splitlines()[-1])
        base, _ = peak_rss([py, "-c", "import honer.api, honer.codegen.build, onnx"])
        compile_peak, _ = peak_rss([py, "-m", "honer", "compile", str(model), "-o", str(art)])
        load_peak, out = peak_rss([py, "-c", LOAD_AND_RUN, str(art)])
        rss = json.loads(out.strip().splitlines()[-1])
    gb = 1e9
    rows = [["weights", weights / gb, 1.0],
            ["interpreter + honer + TVM + onnx imported", base / gb, base / weights],
            ["compile peak", compile_peak / gb, compile_peak / weights],
            ["load + run peak", load_peak / gb, load_peak / weights],
            ["  of which anonymous (copies)", rss["RssAnon"] / gb, rss["RssAnon"] / weights],
            ["  of which the mapped weight file", rss["RssFile"] / gb, rss["RssFile"] / weights]]
    print(table(rows, ["what", "GB", "x weights"]))
    save("memory", {"weights_bytes": weights, "import_peak_bytes": base,
                    "compile_peak_bytes": compile_peak, "load_peak_bytes": load_peak,
                    "load_rss_anon_bytes": rss["RssAnon"], "load_rss_file_bytes": rss["RssFile"]})


if __name__ == "__main__":
    main()
