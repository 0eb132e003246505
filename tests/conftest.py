import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
sys.path.insert(0, REPO)

import recbole_gflowgr  # noqa: E402,F401  (compat shims before anything imports RecBole)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """RecBole writes log/, log_tensorboard/, saved/ and dataset/ where it runs: every test runs in its own folder."""
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every model in the tests is tiny: one intra-op thread is faster than two, and on a busy 2-core machine
    OpenMP's waiting threads made small matmuls ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_dataset(name):
    """Path of a real dataset under ../shared/data, or skip the test with the reason."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.skip(f"real dataset {name} not found at {path} (../shared/data beside the checkout)")
    return path
