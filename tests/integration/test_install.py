"""msslab installed from a built wheel, away from the source tree, runs its commands.

The configs travel inside the package (``msslab/conf``); a checkout-only path to them would
fail here with Hydra's "Primary config directory not found". The fresh environment gets the
wheel alone and sees the test environment's dependencies through a ``.pth`` line (no
reinstalling torch); that line adds a folder without running its ``.pth`` files, so the
editable checkout of the test environment is not on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(args, cwd, env, timeout=400):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"$ {' '.join(map(str, args))}\n(rc={result.returncode})\n{(result.stdout + result.stderr)[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with msslab installed from a wheel built from this checkout."""
    base = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Built from a copy, so the checkout gets no build/ or egg-info folders (src/msslab/conf stays a link).
    source = base / "source"
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    # no build isolation: setuptools and wheel come with the dev extras, so nothing is downloaded
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", base / "dist", source],
        cwd=base, env=env)
    wheel = next((base / "dist").glob("msslab-*.whl"))
    venv = base / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=base, env=env)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=base, env=env)
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base, env=env).stdout.strip()
    (Path(purelib) / "msslab_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_carries_every_config_of_the_checkout(installed):
    python = installed / "bin" / "python"
    out = subprocess.run([python, "-c", "import msslab; print(msslab.__file__); print(msslab.CONFIG_DIR)"],
                         cwd=installed, capture_output=True, text=True, env={"PATH": os.environ["PATH"]}).stdout.split()
    module, config_dir = Path(out[0]), Path(out[1])
    assert installed in module.parents, f"msslab imported from {module}, not from the installed wheel"
    assert installed in config_dir.parents and not config_dir.is_symlink()
    shipped = sorted(p.relative_to(config_dir).as_posix() for p in config_dir.rglob("*.yaml"))
    written = sorted(p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert shipped == written


def test_installed_msslab_trains_from_an_empty_folder_with_a_users_own_experiment(installed, tmp_path):
    """``msslab-train --config-dir my_conf experiment=mine``: a user's preset composes with msslab's."""
    work = tmp_path / "empty"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "mine.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - smoke
        name: mine
        model:
          hidden_size: 16
        """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run([installed / "bin" / "msslab-train", "--config-dir", "my_conf", "experiment=mine", "logger=csv"],
        cwd=work, env=env)
    (results,) = (work / "outputs" / "mine").glob("*/results.json")
    data = json.loads(results.read_text())
    assert data["status"] == "completed"
    config = (results.parent / ".hydra" / "config.yaml").read_text()
    assert "hidden_size: 16" in config and "sample_rate: 8000" in config  # the user's preset on top of smoke
    assert sorted(data["sources"]) == ["bass", "drums", "other", "vocals"]
