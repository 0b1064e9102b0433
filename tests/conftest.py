"""Shared fixtures: the real Hydra config, the console scripts, and one trained smoke run.

Nothing here reaches the network: W&B is forced offline and writes into a temporary
folder, and every dataset is generated. The one expensive thing, a trained
``experiment=smoke`` run (train + museval, about 30 s on 2 cores), happens once
per session and starts in the background as soon as collection shows that a selected
test needs it, so it overlaps with the tests that do not.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from msslab import CONFIG_DIR  # imports nothing heavy (no wandb, matplotlib or torch)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = CONFIG_DIR
SMOKE_TIMEOUT_S = 600

# Before anything imports wandb or matplotlib, and inherited by every subprocess.
os.environ["WANDB_MODE"] = "offline"  # a developer's WANDB_MODE=online must not make tests sync
os.environ["WANDB_SILENT"] = "true"
os.environ["MPLBACKEND"] = "Agg"
os.environ.pop("HYDRA_FULL_ERROR", None)  # error tests check the message a user sees
# The models here are tiny: one thread each is as fast, and several test processes
# (pytest, the background smoke run, concurrent CLI calls) then share the cores instead of
# spinning against each other in OpenMP/BLAS thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
_WANDB_HOME = Path(tempfile.mkdtemp(prefix="msslab-tests-wandb-"))
for _var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
    os.environ[_var] = str(_WANDB_HOME / _var.lower())
# The synthetic-data cache (data.cache_dir: null) goes to a folder of this session, not the user's.
os.environ["XDG_CACHE_HOME"] = str(_WANDB_HOME / "cache")


def console_script(name: str) -> str:
    """Path of an installed console script (``msslab-train``, ...) of this interpreter's environment."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"console script {name} is not installed next to {sys.executable}; run pip install -e .")
    return found


def cli_command(name: str, *args: str) -> list[str]:
    """``msslab-train`` etc. as console scripts, ``python -m msslab.x`` for a ``-m`` module name."""
    if name.startswith("msslab."):
        return [sys.executable, "-m", name, *map(str, args)]
    return [console_script(name), *map(str, args)]


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def tail(self, n: int = 4000) -> str:
        return f"$ {' '.join(self.args)}\n(rc={self.returncode})\n{self.output[-n:]}"


class Cli:
    """Runs the entry points as a user does; ``start`` + ``wait`` run several at once."""

    def __init__(self, cwd: Path):
        self.cwd = cwd

    def start(self, name: str, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        return subprocess.Popen(cli_command(name, *args), cwd=cwd or self.cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=os.environ.copy())

    @staticmethod
    def wait(process: subprocess.Popen, timeout: float = 300) -> CliResult:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"{' '.join(process.args)} ran longer than {timeout} s:\n{(stdout + stderr)[-3000:]}")
        return CliResult(list(process.args), process.returncode, stdout, stderr)

    def run(self, name: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> CliResult:
        return self.wait(self.start(name, *args, cwd=cwd), timeout)

    def run_all(self, commands: dict[str, list[str]], timeout: float = 300) -> dict[str, CliResult]:
        """``{key: [name, *args]}`` run concurrently (each pays its own import time)."""
        started = {key: self.start(*command) for key, command in commands.items()}
        return {key: self.wait(process, timeout) for key, process in started.items()}


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture(scope="session")
def cli_factory():
    """``Cli`` itself, for module- and session-scoped fixtures: ``cli_factory(working_dir)``."""
    return Cli


@pytest.fixture
def compose_train():
    """``compose_train(overrides, output_dir, config_name="train")`` -> the composed run config.

    As inside a Hydra app: the choices are recorded (``HydraConfig``), the ``hydra`` node is
    removed, and ``paths.output_dir`` (``${hydra:runtime.output_dir}`` in an app) points to
    ``output_dir``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    import msslab  # noqa: F401  registers ${msslab.uid:}, which hydra.run.dir uses

    def _compose(overrides: list[str], output_dir: Path, config_name: str = "train"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"],
                          return_hydra_config=True)
        HydraConfig().set_config(cfg)
        task_cfg = copy.deepcopy(cfg)  # what Hydra's run_job hands to the task function
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        return task_cfg

    yield _compose
    HydraConfig.instance().cfg = None  # later tests see no Hydra app, as outside one


# ------------------------------------------------------------------ the session's smoke run

@dataclass
class SmokeRun:
    run_dir: Path
    results: dict
    best_checkpoint: Path
    last_checkpoint: Path
    log: str


_SMOKE: dict = {}


def _start_smoke_run() -> None:
    if _SMOKE:
        return
    base = Path(tempfile.mkdtemp(prefix="msslab-tests-smoke-"))
    log = open(base / "stdout.txt", "w")
    args = cli_command("msslab-train", "experiment=smoke", f"hydra.run.dir={base / 'run'}")
    process = subprocess.Popen(args, cwd=base, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    _SMOKE.update(base=base, args=args, process=process, log=log)


def pytest_collection_modifyitems(session, config, items):
    # tests/integration/ runs the commands end to end: all of it is integration (and slow).
    integration = REPO / "tests" / "integration"
    for item in items:
        if integration in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
    # Start the trained run now if any selected test will need it.
    if config.option.collectonly:
        return
    if any("smoke_run" in getattr(item, "fixturenames", ()) for item in items):
        _start_smoke_run()


def pytest_sessionfinish(session, exitstatus):
    process = _SMOKE.get("process")
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
    if _SMOKE:
        _SMOKE["log"].close()
        shutil.rmtree(_SMOKE["base"], ignore_errors=True)
    shutil.rmtree(_WANDB_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_run() -> SmokeRun:
    """``msslab-train experiment=smoke`` (W&B offline), trained once per session and shared.

    Tests must not modify its files; they copy what they need to change.
    """
    _start_smoke_run()
    process = _SMOKE["process"]
    try:
        returncode = process.wait(timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        returncode = process.wait()
    _SMOKE["log"].flush()
    log = (_SMOKE["base"] / "stdout.txt").read_text(errors="replace")
    assert returncode == 0, f"$ {' '.join(_SMOKE['args'])}\n(rc={returncode})\n{log[-5000:]}"
    run_dir = _SMOKE["base"] / "run"
    results = json.loads((run_dir / "results.json").read_text())
    return SmokeRun(run_dir=run_dir, results=results, best_checkpoint=Path(results["best_checkpoint"]),
                    last_checkpoint=run_dir / "checkpoints" / "last.ckpt", log=log)
