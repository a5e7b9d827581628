"""Pytest hooks: GPU tests skip on a machine without CUDA."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_outputs(tmp_path_factory):
    """A tiny base model directory and LoRA / DoRA adapter outputs trained on it, made once per session."""
    from tests.helpers import train_tiny_outputs

    return train_tiny_outputs(tmp_path_factory.mktemp("tiny_outputs"))
