import os; os.environ.setdefault("TRITON_INTERPRET", "1")  # noqa: E702  (before any Triton import)

"""Shared fixtures. TRITON_INTERPRET must be set before Triton kernels are defined."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_lrm(*args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    """Run the ``lrm`` command (as ``python -m lrm_engine``) in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lrm_engine", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO,
    )


@pytest.fixture
def fresh_plugins():
    """A plugin manager rebuilt for the test and forgotten afterwards."""
    from lrm_engine.plugin_manager import reset_plugin_manager

    reset_plugin_manager()
    yield
    reset_plugin_manager()
