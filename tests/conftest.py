import pathlib

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """Read-only ground-truth data, checked out next to the repository (``../shared``)."""
    return pathlib.Path(__file__).resolve().parents[2] / "shared"
