"""The code base stays ruff clean and mypy clean (both come with the test extras)."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    r = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_formatted():
    r = subprocess.run(
        ["ruff", "format", "--check", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_mypy_strict_clean(monkeypatch):
    """mypy as configured in pyproject.toml ([tool.mypy]: strict, on emvae and emvae_cli)."""
    from mypy import api

    monkeypatch.chdir(ROOT)
    stdout, stderr, status = api.run([])
    assert status == 0, stdout + stderr
    assert "Success: no issues found" in stdout
