"""Shared fixtures: reference data location, seeded randomness, capability markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFDATA = Path(os.environ.get("ODEXPORT_REFDATA", REPO_ROOT.parent / "shared" / "refdata"))


def refdata_path(*parts: str) -> Path:
    """Path inside ``../shared/refdata``; skips the test with a reason when it is absent."""
    path = REFDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (set ODEXPORT_REFDATA or check out ../shared)")
    return path


def load_refdata(*parts: str):
    import torch

    return torch.load(refdata_path(*parts), weights_only=True, map_location="cpu")


def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true", help="fail, not skip, tests marked gpu/tensorrt when the capability is missing")


def pytest_collection_modifyitems(config, items):
    from odexport._optional import available, cuda_available

    require = config.getoption("--require-gpu")
    have_cuda = cuda_available()
    have_trt = have_cuda and available("tensorrt")
    for item in items:
        if "gpu" in item.keywords and not have_cuda and not require:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)"))
        if "tensorrt" in item.keywords and not have_trt and not require:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU (pip install 'odexport[trt]' on an NVIDIA machine)"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    yield
