"""A Hydra launcher for one machine with N GPUs: N jobs at once, one GPU (set) each.

``msslab-train -m ... hydra/launcher=gpus`` (conf/hydra/launcher/gpus.yaml).
Each job is its own fresh Python process started by submitit's local executor
(not a worker of a pool), so it can start its own data-loader workers and its
museval process pool, and it sees only its GPUs through ``CUDA_VISIBLE_DEVICES``.
A finished job's GPUs go to the next waiting job.

It lives in ``hydra_plugins`` because Hydra only instantiates launchers from there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

log = logging.getLogger(__name__)


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process may hand out (all of ``CUDA_VISIBLE_DEVICES``, else every GPU)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [int(g) for g in listed.split(",") if g.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []


class GPUPoolLauncher(LocalLauncher):
    """Runs a sweep's jobs as local processes, ``jobs_at_once`` at a time, ``gpus_per_job`` GPUs each.

    Args:
        jobs_at_once: jobs running together; None: as many as the GPUs allow (at least 1).
        gpus_per_job: GPUs given to each job (0 on a machine without GPUs).
        poll_seconds: how often finished jobs are looked for.
        **params: submitit's local-executor settings (submitit_folder, timeout_min, ...).
    """

    def __init__(self, jobs_at_once: int | None = None, gpus_per_job: int = 1, poll_seconds: float = 1.0,
                 **params) -> None:
        super().__init__(**params)
        self.jobs_at_once, self.gpus_per_job, self.poll_seconds = jobs_at_once, int(gpus_per_job), poll_seconds

    def slots(self) -> list[list[int]]:
        """The GPU list of every slot (one job runs per slot)."""
        gpus, per_job = visible_gpus(), self.gpus_per_job
        count = self.jobs_at_once or max(1, len(gpus) // per_job if per_job else 1)
        if per_job and count * per_job > len(gpus):
            raise ValueError(f"hydra.launcher: {count} jobs x {per_job} GPUs need {count * per_job} GPUs, "
                             f"{len(gpus)} are visible ({gpus}); lower jobs_at_once or gpus_per_job")
        return [gpus[k * per_job:(k + 1) * per_job] for k in range(count)]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"],
                                          max_num_timeout=self.params.get("max_num_timeout", 0))
        settings = {k: self.params[k] for k in ("timeout_min", "signal_delay_s", "stderr_to_stdout", "setup")
                    if self.params.get(k) is not None}
        free = self.slots()
        log.info(f"GPU pool: {len(free)} jobs at once, GPUs {free}; sweep output dir: {sweep_dir}")
        waiting = list(enumerate(job_overrides, start=initial_job_idx))
        running: dict = {}  # job -> its slot
        jobs: dict[int, object] = {}
        while waiting or running:
            while waiting and free:
                idx, overrides = waiting.pop(0)
                slot = free.pop(0)
                executor.update_parameters(gpus_per_node=len(slot), visible_gpus=tuple(slot), **settings)
                log.info(f"\t#{idx} on GPUs {slot or 'none'}: {' '.join(filter_overrides(overrides))}")
                job = executor.submit(self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                      Singleton.get_state())
                running[job], jobs[idx] = slot, job
            for job in [j for j in running if j.done()]:
                free.append(running.pop(job))
            if running:
                time.sleep(self.poll_seconds)
        return [jobs[idx].results()[0] for idx in sorted(jobs)]
