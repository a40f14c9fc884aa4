"""Shared test settings: where the reference fixtures and the shared prior live."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Under pytest-xdist (`make test` runs a worker per core) the cores are shared out: each worker, and every process
# it starts, gets its share of intra-op threads instead of all of them (two workers of two threads each on two
# cores wait for each other far longer than they compute).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def fixtures_dir() -> Path:
    """``GDP_REFERENCE_FIXTURES`` (relative paths from the working directory), else ``../shared/fixtures``."""
    env = os.environ.get("GDP_REFERENCE_FIXTURES")
    return Path(env).resolve() if env else SHARED / "fixtures"


def fixture_files(prefix: str) -> list:
    folder = fixtures_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and p.suffix == ".pt")


@pytest.fixture(scope="session")
def skimage64_checkpoint() -> Path:
    path = SHARED / "priors" / "skimage64.pt"
    assert path.is_file(), f"{path} is missing: the tests need the shared folder beside the repository"
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def cli_argv(monkeypatch):
    """``main(argv)`` in-process, as the console script would run (LightningCLI warns about pytest's argv)."""
    monkeypatch.setattr(sys, "argv", ["gdp"])


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: these models are small, and two OpenMP threads on a busy two-core
    machine wait for each other far longer than they compute (the tiny UNet's step goes from 0.07 s to seconds);
    it also makes results independent of the machine's core count (see ``tests/test_unchanged_outputs.py``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
