"""``hydra/launcher=gpus``: a sweep's jobs as separate processes, N at once, each with its own GPUs.

On the CPU (no GPU): two jobs at once, with loader workers and a museval process pool in
each, which the joblib launcher's worker processes cannot start.
"""

from __future__ import annotations

import json

import pytest
from test_sweeps import TINY, _compose, multirun


def test_gpu_pool_gives_each_slot_its_own_gpus(monkeypatch):
    from hydra_plugins.msslab_launcher.gpu_pool import GPUPoolLauncher

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert GPUPoolLauncher(submitit_folder="x").slots() == [[0], [1], [2], [3]]
    assert GPUPoolLauncher(gpus_per_job=2, submitit_folder="x").slots() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="jobs_at_once"):
        GPUPoolLauncher(jobs_at_once=3, gpus_per_job=2, submitit_folder="x").slots()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert GPUPoolLauncher(jobs_at_once=2, gpus_per_job=0, submitit_folder="x").slots() == [[], []]
    cfg = _compose(["hydra/launcher=gpus"])
    assert cfg.hydra.launcher._target_.endswith("GPUPoolLauncher") and cfg.hydra.launcher.gpus_per_job == 1


def test_two_jobs_run_at_once_as_processes_with_loader_workers(tmp_path):
    sweep_dir = tmp_path / "multirun" / "gpus"
    multirun(tmp_path, sweep_dir, "experiment=smoke", *TINY, "name=gpus", "hydra/launcher=gpus",
             "hydra.launcher.jobs_at_once=2", "hydra.launcher.gpus_per_job=0", "hydra.launcher.poll_seconds=0.2",
             "data.num_workers=1", "metric.n_jobs=2", "seed=1,2")
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}
    assert sorted(results) == ["0", "1"]
    assert all(r["status"] == "completed" for r in results.values()), results
    # submitit's local executor: one folder per job, named by the process id of the job
    jobs = sorted(p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
    assert len(jobs) == 2
    submitted = [next(p.glob("*_submitted.pkl")).stat().st_mtime for p in jobs]
    finished = [next(p.glob("*_result.pkl")).stat().st_mtime for p in jobs]
    assert max(submitted) < min(finished)  # the second started before the first ended
