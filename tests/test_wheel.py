"""Packaging (issue 17): `python -m build` makes an sdist and a wheel that `twine check` passes; the wheel installs
into a fresh venv without dev tools and runs an example against the emulator.

pip's download cache (~/.cache/pip, filled by `make venv`) keeps the install fast; the first run on a fresh machine
downloads the runtime dependencies from PyPI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY

ROOT = Path(__file__).resolve().parent.parent


def sh(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{args} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "kvs-edge"  # a clean copy: no build/ or egg-info in the worktree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "docs/api"))
    r = sh(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src)
    assert "deprecat" not in (r.stdout + r.stderr).lower(), "the build printed a deprecation warning"
    return out


def test_sdist_and_wheel_pass_twine_check_and_carry_the_metadata(dist):
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    sh(sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists)
    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "kvs_edge/py.typed" in names and "kvs_edge/producer.py" in names
    assert "License-Expression: Apache-2.0" in meta and "Classifier: Typing :: Typed" in meta
    # the license text ships with the wheel (setuptools' default license-files pick up LICENSE)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names) and "License-File: LICENSE" in meta


def test_the_wheel_in_a_fresh_venv_runs_an_example(dist, emulator, tmp_path):
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    sh(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", next(dist.glob("*.whl")))
    tools = sh(py, "-m", "pip", "list", "--format=freeze").stdout.lower()
    assert "pytest" not in tools and "moto" not in tools  # no dev tools
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    env.update(AWS_ACCESS_KEY_ID=DEFAULT_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=DEFAULT_SECRET_ACCESS_KEY,
               AWS_REGION="us-east-1", AWS_ENDPOINT_URL=emulator.url, AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    # run from tmp_path so that the worktree's kvs_edge cannot be imported instead of the installed one
    r = sh(py, ROOT / "examples" / "numpy_frames.py", "wheel", "2.5", env=env, cwd=tmp_path, timeout=180)
    assert "fragments persisted" in r.stdout
    where = sh(py, "-c", "import kvs_edge; print(kvs_edge.__file__)", env=env, cwd=tmp_path).stdout
    assert str(venv) in where
    assert emulator.archive("wheel")
