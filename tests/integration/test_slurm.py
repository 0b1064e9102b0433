"""``hydra/launcher=slurm`` against a real one-node SLURM cluster (``scripts/slurm_cluster.sh``).

One cluster serves the module. Its sweeps are submitted together at the start (the node's
CPUs run them side by side) and each test waits for its own: a sweep of four jobs, a sweep
with a failing job and its relaunch, a job requeued mid-training, DDP with two ``srun``
tasks, and a GPU request handed to ``sbatch``. Needs root and Debian's ``slurm-wlm``; skipped
otherwise, except under CI (``CI=true``, as root), where a cluster that does not start fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, cli_command

SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = [pytest.mark.slow, pytest.mark.integration]

# The smallest smoke runs: one epoch of 4 steps, one short test track, CSV logs.
SMALL = ["experiment=smoke", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
         "data.targets=[vocals,accompaniment]", "data.test_tracks.nb_tracks=1", "data.test_tracks.seconds=3.0",
         "logger=csv"]
# One CPU and no GPU per job (the node has no GPU), in the test cluster's only partition.
ON_NODE = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=null",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15"]
# Records each training step (rank, requeue count, step, time, a hash of the batch) in the run dir.
PROBE = ["+callbacks.probe._target_=slurm_probe.Probe", "+callbacks.probe.run_dir=${paths.output_dir}"]
PROBE_SOURCE = '''
import hashlib, os, time
import lightning.pytorch as pl

class Probe(pl.Callback):
    def __init__(self, run_dir, sleep_s=0.0):
        self.run_dir, self.sleep_s = run_dir, sleep_s

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        digest = hashlib.sha1(batch[0].detach().cpu().numpy().tobytes()).hexdigest()[:12]
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        with open(os.path.join(self.run_dir, f"probe-rank{trainer.global_rank}.txt"), "a") as f:
            f.write(f"{restarts} {trainer.global_step} {time.time():.3f} {digest}\\n")
        time.sleep(self.sleep_s)
'''
EVERY_N = 5  # step checkpoint interval of the requeued job


def _probe(run_dir: Path, rank: int = 0) -> list[tuple[int, int, float, str]]:
    path = run_dir / f"probe-rank{rank}.txt"
    if not path.is_file():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(int(r), int(s), float(t), h) for r, s, t, h in rows]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node cluster; the environment its commands need; stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster needs root (munged, slurmd)")
    if not (shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged")):
        reason = "slurm-wlm / munge are not installed (scripts/slurm_cluster.sh install)"
        if IN_CI:  # .ci/run installs them: their absence there is a broken CI, not a reason to skip
            pytest.fail(f"CI must run the SLURM tests: {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-state")
    env = os.environ | {"SLURM_CONF": str(state / "slurm.conf"), "PATH": f"{state / 'bin'}:{os.environ['PATH']}"}
    started = subprocess.run(["bash", str(SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True, timeout=60)
        message = f"the SLURM cluster did not start: {started.stderr.strip()[-2000:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield env
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, timeout=30)
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True, timeout=60)


class Sweep:
    """``msslab-train -m`` running in the background, its sweep directory and output."""

    def __init__(self, base: Path, name: str, overrides: list[str], env: dict):
        self.dir = base / name
        self.args = cli_command("msslab-train", "-m", *overrides, f"hydra.sweep.dir={self.dir}")
        self.env, self.cwd = env, base
        self.log = base / f"{name}.log"
        self.start()

    def start(self):
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 400) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"{' '.join(self.args)} ran longer than {timeout} s:\n{self.log.read_text()[-3000:]}")
        return code, self.log.read_text(errors="replace")

    def results(self) -> dict[int, dict]:
        return {int(p.parent.name): json.loads(p.read_text()) for p in self.dir.glob("*/results.json")}


@pytest.fixture(scope="module")
def sweeps(cluster, tmp_path_factory):
    """Every sweep of the module, submitted at once."""
    base = tmp_path_factory.mktemp("slurm-sweeps")
    (base / "slurm_probe.py").write_text(PROBE_SOURCE)
    env = cluster | {"PYTHONPATH": os.pathsep.join(filter(None, [str(base), os.environ.get("PYTHONPATH")]))}
    started = {
        # Requeued while it trains: slow steps (0.4 s) and a step checkpoint every EVERY_N steps; W&B on.
        "requeue": Sweep(base, "requeue", [*SMALL, *ON_NODE, *PROBE, "+callbacks.probe.sleep_s=0.4", "logger=wandb",
                                           "data.samples_per_track=16", "trainer.limit_train_batches=16",
                                           f"callbacks.step_checkpoint.every_n_train_steps={EVERY_N}"], env),
        "four": Sweep(base, "four", [*SMALL, *ON_NODE, *PROBE, "model.hidden_size=8,12,16,24"], env),
        "fail": Sweep(base, "fail", [*SMALL, *ON_NODE, "optimizer.lr=0.001,-1.0"], env),  # -1: Adam refuses it in fit
        "ddp": Sweep(base, "ddp", [*SMALL, *ON_NODE, *PROBE, "hydra.launcher.tasks_per_node=2", "trainer=ddp",
                                   "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                                   "trainer.sync_batchnorm=false", "+trainer.limit_train_batches=2",
                                   "+trainer.limit_val_batches=1"], env),
    }
    try:
        yield started
    finally:
        for sweep in started.values():
            if sweep.process.poll() is None:
                sweep.process.kill()
                sweep.process.wait()


def _sacct_states(env: dict) -> dict[str, str]:
    """``{job (e.g. 7_0 for an array task): state}`` of every job SLURM knows, as submitit reads them."""
    out = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2"], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    return dict(line.split("|")[:2] for line in out.splitlines()[1:] if line)


def test_a_requeued_job_resumes_from_its_step_checkpoint(sweeps, cluster):
    # First in the module: its job is the first submitted, and must still be training.
    sweep = sweeps["requeue"]
    run_dir = sweep.dir / "0"
    deadline = time.monotonic() + 300
    while not any(step >= EVERY_N + 2 for _, step, _, _ in _probe(run_dir)):  # past the first step checkpoint
        assert sweep.process.poll() is None and time.monotonic() < deadline, sweep.log.read_text()[-3000:]
        time.sleep(0.2)
    assert not (run_dir / "results.json").exists(), "the job finished before it could be requeued"
    job = next(p.name for p in (sweep.dir / ".submitit").iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name))
    subprocess.run(["scontrol", "requeue", job], env=cluster, check=True, timeout=30)  # as a preemption does

    code, output = sweep.wait()
    assert code == 0, output[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed", results.get("error")
    assert results["slurm"]["restarts"] == 1 and results["slurm"]["job"] == job
    assert len(results["resumes"]) == 1
    resumed_at = results["resumes"][0]["global_step"]
    steps = _probe(run_dir)
    before = max(step for restarts, step, _, _ in steps if restarts == 0)
    after = sorted(step for restarts, step, _, _ in steps if restarts == 1)
    lost = before - resumed_at
    print(f"requeue: trained to step {before}, resumed from step {resumed_at} ({lost} steps lost)")
    assert resumed_at > 0 and resumed_at % EVERY_N == 0 and 0 <= lost <= EVERY_N
    assert after[0] == resumed_at + 1 and after[-1] == results["global_step"] == 16  # continued, not restarted
    wandb_ids = {re.sub(r".*-", "", p.name) for p in (run_dir / "wandb").glob("offline-run-*")}
    assert wandb_ids == {(run_dir / ".msslab" / "wandb_id").read_text().strip()}  # one W&B run


def test_a_sweep_of_four_jobs_runs_as_a_job_array_and_compares(sweeps, cluster, tmp_path):
    code, output = sweeps["four"].wait()
    assert code == 0, output[-3000:]
    results = sweeps["four"].results()
    assert sorted(results) == [0, 1, 2, 3], output[-3000:]
    assert {r["status"] for r in results.values()} == {"completed"}, [r.get("error") for r in results.values()]
    jobs = {r["slurm"]["job"] for r in results.values()}
    array_ids = {r["slurm"]["array_job_id"] for r in results.values()}
    assert len(array_ids) == 1 and jobs == {f"{next(iter(array_ids))}_{i}" for i in range(4)}  # one array, 4 tasks
    assert sorted(int(r["slurm"]["array_task_id"]) for r in results.values()) == [0, 1, 2, 3]
    assert all(r["slurm"]["restarts"] == 0 for r in results.values())
    deadline = time.monotonic() + 60  # the launcher returns on the result files; SLURM may still be COMPLETING
    while any((known := _sacct_states(cluster)).get(job) != "COMPLETED" for job in jobs):
        assert time.monotonic() < deadline, f"{jobs} not all COMPLETED: {known}"
        time.sleep(1)
    submitted = min(p.stat().st_mtime for p in (sweeps["four"].dir / ".submitit").glob("*/*_submission.sh"))
    waits = {r["slurm"]["job"]: _probe(sweeps["four"].dir / str(n))[0][2] - submitted for n, r in results.items()}
    print("submission to first training step:", ", ".join(f"{job} {s:.1f} s" for job, s in sorted(waits.items())))
    report = subprocess.run(cli_command("msslab-compare", sweeps["four"].dir, f"output={tmp_path}"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "comparison.csv")
    assert len(summary) == 4 and set(summary["status"]) == {"completed"}
    assert summary["variant"].str.contains("model.hidden_size=").all()


def test_a_failed_job_is_reported_and_a_relaunch_skips_finished_jobs(sweeps):
    sweep = sweeps["fail"]
    code, output = sweep.wait()
    assert code == 0, output[-3000:]  # the sweep goes on past a failed job
    results = sweep.results()
    by_status = {r["status"]: r for r in results.values()}
    assert sorted(by_status) == ["completed", "failed"], output[-3000:]
    assert "learning rate" in by_status["failed"]["error"] and by_status["failed"]["slurm"]["job_id"]
    finished = {n: r["finished"] for n, r in results.items()}

    sweep.start()  # the same command into the same sweep directory
    code, output = sweep.wait()
    assert code == 0, output[-3000:]
    assert {n: r["finished"] for n, r in sweep.results().items()} == finished  # neither job ran again
    logs = "".join(p.read_text(errors="replace") for p in sweep.dir.glob("*/train.log"))
    assert "already completed, not run again" in logs and "already failed, not run again" in logs


def test_ddp_with_two_srun_tasks_trains_two_ranks_and_evaluates_once(sweeps):
    sweep = sweeps["ddp"]
    code, output = sweep.wait()
    assert code == 0, output[-3000:]
    run_dir = sweep.dir / "0"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed", results.get("error")
    assert len(results["tracks"]) == 1  # the test set once, not once per rank
    ranks = {rank: _probe(run_dir, rank) for rank in (0, 1)}
    assert all(ranks.values()), "both ranks must train"
    assert {h for *_, h in ranks[0]}.isdisjoint({h for *_, h in ranks[1]})  # each rank draws its own examples
    logs = {p.name: p.read_text(errors="replace") for p in (sweep.dir / ".submitit").glob("*/*_log.*")}
    assert any("MEMBER: 2/2" in text or "distributed_backend=gloo" in text for text in logs.values()), logs
    assert sum(text.count("museval medians") for text in logs.values()) == 1  # evaluated by rank 0 only
    assert len(list(sweep.dir.glob("*/results.json"))) == 1


def test_a_gpu_request_reaches_sbatch(cluster, tmp_path):
    # The node has no GPU: sbatch refuses the request, after the launcher wrote it into the script.
    sweep_dir = tmp_path / "gpu"
    proc = subprocess.run(cli_command("msslab-train", "-m", *SMALL, *ON_NODE, "model.hidden_size=8,16",
                                      "hydra.launcher.gpus_per_node=2",
                                      "hydra.launcher.cpus_per_task=1", "hydra.launcher.array_parallelism=1",
                                      "hydra.launcher.timeout_min=7", f"hydra.sweep.dir={sweep_dir}"),
                          cwd=tmp_path, env=cluster, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "gres" in proc.stderr.lower(), proc.stderr[-3000:]
    script = next((sweep_dir / ".submitit").glob("*.sh")).read_text()
    for line in ("#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=1", "#SBATCH --partition=debug",
                 "#SBATCH --time=7", "#SBATCH --array=0-1%1"):
        assert line in script, script


def test_results_json_names_the_slurm_job(tmp_path, monkeypatch):
    # No cluster needed: what a run inside an array task (requeued once) records.
    from msslab.results import read_results, write_results

    for key, value in {"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3",
                       "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(key, value)
    write_results(tmp_path, status="completed")
    assert read_results(tmp_path)["slurm"] == {"job": "12_3", "job_id": "17", "array_job_id": "12",
                                               "array_task_id": "3", "restarts": 1}
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key)
    write_results(tmp_path, status="completed")
    assert "slurm" not in read_results(tmp_path)  # outside SLURM: no such key
