"""Host artifacts on the Relax VM run their kernels' parallel loops on honer's thread pool
(runtime/honer_pool.c), not TVM's: the loader repoints the library's launch hook."""

import ctypes
import ctypes.util
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

import honer
from honer.errors import ArtifactError
from honer.runtime import loader


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    # big enough that its matmuls take parallel loops
    model = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 256)).eval()
    x = torch.randn(96, 64)
    path = honer.compile(model, (x,)).save(tmp_path_factory.mktemp("p") / "mlp.honer")
    with torch.no_grad():
        return path, x.numpy(), model(x).numpy()


def test_the_library_launches_on_honers_pool(saved):
    path, x, want = saved
    loaded = honer.load(path)
    assert loaded.manifest["target"]["thread_pool"] == "honer"
    np.testing.assert_allclose(loaded(x), want, rtol=1e-4, atol=1e-5)
    pool = loaded.compiled.pool
    hook = ctypes.c_void_p.in_dll(pool, "__TVMBackendParallelLaunch").value
    assert hook == ctypes.cast(pool.honer_pool_launch, ctypes.c_void_p).value
    for _ in range(20):  # launches back to back, the workers awake or asleep
        np.testing.assert_allclose(loaded(x), want, rtol=1e-4, atol=1e-5)


def test_thread_count_follows_tvm_num_threads(saved, tmp_path, monkeypatch):
    path, x, want = saved
    copy = tmp_path / "copy.honer"  # another file: a library of its own, with its own pool
    shutil.copytree(path, copy)
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    loaded = honer.load(copy)
    np.testing.assert_allclose(loaded(x), want, rtol=1e-4, atol=1e-5)
    assert loaded.compiled.pool.honer_pool_threads() == 1


def test_a_library_without_the_pool_is_refused():
    libm = ctypes.util.find_library("m")
    with pytest.raises(ArtifactError, match="lacks it"):
        loader._launch_on_honer_pool(libm)


def test_a_model_without_parallel_loops_keeps_tvms_pool():
    model = nn.Linear(3, 2).eval()
    x = torch.randn(1, 3)
    compiled = honer.compile(model, (x,))
    assert compiled.manifest["target"]["thread_pool"] == "tvm"
    assert compiled.loaded.compiled.pool is None
    np.testing.assert_allclose(compiled(x.numpy()), model(x).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
