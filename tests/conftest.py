"""Shared fixtures. Tests that need the shared data folder skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from emaprobe.utils.paths import ENV_DATA, data_root


@pytest.fixture
def shared_data() -> Path:
    """The folder named by EMAPROBE_DATA (holding text/, gpt2/, ud-english-ewt/)."""
    root = data_root()
    if root is None:
        pytest.skip(f"{ENV_DATA} is not set to a data folder (holding text/, gpt2/, ud-english-ewt/)")
    return root


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core CI box they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


os.environ.setdefault("TQDM_DISABLE", "1")
