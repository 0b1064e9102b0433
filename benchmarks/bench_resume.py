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
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

PROGRESS = re.compile(r"Epoch (\d+):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


class Watched:
    """A training subprocess whose progress bar is read as it prints: (seconds since launch, epoch, batch, batches)."""

    def __init__(self, args: list[str]):
        self.start = time.perf_counter()
        env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg",
                            "COLUMNS": "200"}
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.progress: list[tuple[float, int, int, int]] = []
        self.text = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buffer = ""
        while chunk := self.process.stdout.read1(4096):
            buffer += chunk.decode(errors="replace")
            self.text += chunk.decode(errors="replace")
            *done, buffer = re.split(r"[\r\n]", buffer)
            for line in done:
                if match := PROGRESS.search(line):
                    epoch, batch, batches = map(int, match.groups())
                    if not self.progress or self.progress[-1][1:3] != (epoch, batch):
                        self.progress.append((time.perf_counter() - self.start, epoch, batch, batches))

    def wait_for(self, condition, timeout: float = 3600) -> tuple[float, int, int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in list(self.progress):
                if condition(entry):
                    return entry
            if self.process.poll() is not None:
                raise SystemExit(f"training ended (rc={self.process.returncode}):\n{self.text[-3000:]}")
            time.sleep(0.05)
        raise SystemExit("timed out")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def steps(entry) -> int:
    _, epoch, batch, batches = entry
    return epoch * batches + batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-after-steps", type=int, default=45, help="kill once this many steps are trained")
    parser.add_argument("overrides", nargs="*", help="msslab-train overrides")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-resume-")) / "run"
    command = [sys.executable, "-m", "msslab.train", *args.overrides, f"hydra.run.dir={run_dir}"]

    fresh = Watched(command)
    first = fresh.wait_for(lambda e: steps(e) >= 1)
    at_kill = fresh.wait_for(lambda e: steps(e) >= args.kill_after_steps)
    time.sleep(0.2)  # whatever the bar printed last before the kill counts
    at_kill = max(fresh.progress, key=steps)
    fresh.kill()
    checkpoints = {p.name: torch.load(p, map_location="cpu", weights_only=True)["global_step"]
                   for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name in ("last.ckpt", "step.ckpt")}
    saved = max(checkpoints.values(), default=0)

    resumed = Watched([sys.executable, "-m", "msslab.train", f"resume={run_dir}"])
    back = resumed.wait_for(lambda e: steps(e) > saved)
    resumed.kill()
    batches = at_kill[3]
    print(f"command: msslab-train {' '.join(args.overrides)}  ({batches} steps per epoch)")
    print(f"killed at step {steps(at_kill)} ({at_kill[0]:.1f} s after launch); newest checkpoint: step {saved} {checkpoints}")
    print(f"training lost: {steps(at_kill) - saved} steps = {(steps(at_kill) - saved) / batches:.2f} epochs")
    print(f"launch to first training step: fresh {first[0]:.1f} s, resume {back[0]:.1f} s "
          f"(ratio {back[0] / first[0]:.2f})")


if __name__ == "__main__":
    main()
