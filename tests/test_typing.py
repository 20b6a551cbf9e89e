"""mypy over the project as pyproject.toml's [tool.mypy] configures it (strict on proxy/pgwire, the snapshot
model and the policy engine), run as an ordinary test the way asyncpg's tests/test__sourcecode.py runs flake8."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_type_errors() -> None:
    # No arguments: the files and per-module strictness come from pyproject.toml, as in .ci/run.
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"mypy found type errors:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout
