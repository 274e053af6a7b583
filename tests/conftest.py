import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _private_test_ledger(tmp_path_factory, monkeypatch):
    """Each test gets its own test ledger (gaflow.evaluation.ledger), never the user's."""
    monkeypatch.setenv("GAFLOW_LEDGER", str(tmp_path_factory.mktemp("ledger") / "test_ledger.jsonl"))
    yield
