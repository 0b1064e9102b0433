"""What a kill costs: training lost and the time a resume takes to get back to training.

Starts ``msslab-train`` (the default config unless overrides are given), kills it with
SIGKILL once it has trained ``--kill-after-steps`` steps, then reruns it with
``resume=<run dir>`` and stops that as soon as it trains its first step. Prints the steps
lost (steps done at the kill minus the step of the newest checkpoint) and the time from
launch to the first training step, for the fresh start (the baseline, same machine, same
run) and the resume.

    python benchmarks/bench_resume.py                      # the default run
    python benchmarks/bench_resume.py experiment=smoke data.samples_per_track=40 --kill-after-steps 15
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch


class StepLog(pl.Callback):
    """Appends ``<unix time> <global step>`` after every training step (the progress bar is not
    readable from a pipe); added to the run as ``+callbacks.step_log``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, *args):
        with open(self.path, "a") as f:
            f.write(f"{time.time()} {trainer.global_step}\n")


def logged(path: Path) -> list[tuple[float, int]]:
    if not path.exists():
        return []
    return [(float(t), int(s)) for t, s in (line.split() for line in path.read_text().splitlines() if line.strip())]


def launch(args: list[str]) -> tuple[subprocess.Popen, float]:
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg",
                        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env), time.time()


def wait_until(process: subprocess.Popen, since: float, path: Path, condition, timeout: float = 3600):
    """The first step logged by ``process`` (launched at unix time ``since``) that meets ``condition``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in logged(path):
            if entry[0] >= since and condition(entry[1]):
                return entry
        if process.poll() is not None:
            raise SystemExit(f"training ended early (rc={process.returncode})")
        time.sleep(0.05)
    raise SystemExit("timed out")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-after-steps", type=int, default=45, help="kill once this many steps are trained")
    parser.add_argument("overrides", nargs="*", help="msslab-train overrides")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    run_dir, steps_file = base / "run", base / "steps.txt"
    overrides = [*args.overrides, "+callbacks.step_log._target_=bench_resume.StepLog",
                 f"+callbacks.step_log.path={steps_file}"]

    fresh, started = launch([sys.executable, "-m", "msslab.cli.train", *overrides, f"hydra.run.dir={run_dir}"])
    first = wait_until(fresh, started, steps_file, lambda step: step >= 1)
    wait_until(fresh, started, steps_file, lambda step: step >= args.kill_after_steps)
    fresh.send_signal(signal.SIGKILL)
    fresh.wait()
    at_kill = max(step for _, step in logged(steps_file))
    checkpoints = {p.name: torch.load(p, map_location="cpu", weights_only=True)["global_step"]
                   for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name in ("last.ckpt", "step.ckpt")}
    saved = max(checkpoints.values(), default=0)

    resumed, restarted = launch([sys.executable, "-m", "msslab.cli.train", f"resume={run_dir}"])
    back = wait_until(resumed, restarted, steps_file, lambda step: step == saved + 1)
    resumed.send_signal(signal.SIGKILL)
    resumed.wait()
    print(f"command: msslab-train {' '.join(args.overrides)}")
    print(f"killed at step {at_kill}; newest checkpoint: step {saved} {checkpoints}")
    print(f"training lost: {at_kill - saved} steps")
    print(f"launch to first training step: fresh {first[0] - started:.1f} s, resume {back[0] - restarted:.1f} s "
          f"(ratio {(back[0] - restarted) / (first[0] - started):.2f})")


if __name__ == "__main__":
    main()
