"""The foundation's coverage table: every zoo model through honer vs PyTorch eager, and the ONNX
pytorch-operator / pytorch-converted suites vs their stored outputs.

    .venv/bin/python -m honer.benchmarks.coverage
"""

from __future__ import annotations

import glob
import os
import time

from honer.benchmarks import harness

TOLERANCE = 1e-4  # max abs error / max |eager output|


def zoo_table() -> list[dict]:
    import honer
    from honer.tests.models.zoo import ZOO

    rows = []
    for name in sorted(ZOO):
        model, examples = ZOO[name]()
        start = time.perf_counter()
        try:
            compiled = honer.compile(model, examples)
            err = compiled.report["check"]["max_scaled_error"]
            rows.append({"model": name, "status": "pass" if err <= TOLERANCE else "FAIL",
                         "max_error": err, "nodes": compiled.report["graph"]["nodes"],
                         "parameters": compiled.report["graph"]["parameters"],
                         "seconds": round(time.perf_counter() - start, 1)})
        except honer.HonerError as e:
            rows.append({"model": name, "status": f"error: {e}", "max_error": None})
        print(rows[-1], flush=True)
    return rows


def onnx_suites() -> dict:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import honer
    from honer.api import max_scaled_error

    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    cases = sorted(glob.glob(os.path.join(root, "pytorch-operator", "*")) +
                   glob.glob(os.path.join(root, "pytorch-converted", "*")))
    failures = {}
    for case in cases:
        def tensors(kind: str, case: str = case) -> list[np.ndarray]:
            files = sorted(glob.glob(os.path.join(case, "test_data_set_0", f"{kind}_*.pb")))
            return [numpy_helper.to_array(onnx.load_tensor(f)) for f in files]

        inputs, outputs = tensors("input"), tensors("output")
        try:
            got = honer.compile(os.path.join(case, "model.onnx"), inputs, check=False).run(*inputs)
            err = max_scaled_error(got, outputs)
            if err > TOLERANCE:
                failures[os.path.basename(case)] = f"max error {err:.2e}"
        except honer.HonerError as e:
            failures[os.path.basename(case)] = str(e).splitlines()[0]
    return {"cases": len(cases), "passed": len(cases) - len(failures), "failures": failures}


def main() -> None:
    harness.pin_threads(2)
    zoo = zoo_table()
    suites = onnx_suites()
    path = harness.save("coverage", {"tolerance": TOLERANCE, "zoo": zoo, "onnx_suites": suites})
    print(harness.table([[r["model"], r["status"], r.get("max_error"), r.get("nodes"),
                          r.get("seconds")] for r in zoo],
                        ["model", "status", "max error / output scale", "IR nodes",
                         "compile+check s"]))
    print(f"ONNX suites: {suites['passed']}/{suites['cases']} pass; failures: "
          f"{suites['failures'] or 'none'}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
