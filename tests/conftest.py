"""Shared test setup: a headless matplotlib backend and no scale set from outside."""

import os

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Each test starts without LLMBOOK_SCALE / offline flags from the caller's shell."""
    for var in ("LLMBOOK_SCALE", "LLMBOOK_RUN_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
