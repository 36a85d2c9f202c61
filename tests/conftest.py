import os
import sys
from pathlib import Path

import pytest

from nnunet_oar.paths import CPU_DEFAULTS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _venv_on_path(monkeypatch):
    """nnU-Net's console scripts (nnUNetv2_*) live next to this interpreter."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's three folders in a temporary directory, and the CPU-friendly settings."""
    env = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in env.items():
        v.mkdir()
        monkeypatch.setenv(k, str(v))
    for k, v in CPU_DEFAULTS.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """Six small phantoms in VISCERAL layout (shared by the tests; treat as read-only)."""
    from nnunet_oar.phantom import write_phantoms
    out = tmp_path_factory.mktemp("phantoms") / "visceral"
    write_phantoms(out, 6, seed=3, scale=0.4, progress=False)
    return out


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared is only present in the project workspace)")
    return path


@pytest.fixture(scope="session")
def trained_localizer(tmp_path_factory):
    """A localizer trained for a few iterations on two folds of tiny phantoms (real nnU-Net commands)."""
    from tests.nnunet_helpers import train_tiny_localizer
    return train_tiny_localizer(tmp_path_factory.mktemp("loc"))
