"""Shared test settings: where the reference fixtures and the shared prior live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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
