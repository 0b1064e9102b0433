"""Peak memory and time of ``msslab-separate`` against the input's length.

Writes 44.1 kHz stereo files of each length (default 1 and 10 minutes), separates each
in a fresh process and prints that process's peak resident memory, its wall time, and
the ratio to the shortest file (flat memory: a ratio near 1).

    python benchmarks/bench_separate.py [--ckpt model.ckpt] [--minutes 1 10] [--device cpu]

Without ``--ckpt`` the smoke model is trained first (``msslab-train experiment=smoke``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
# Runs one command and prints its peak RSS in kB (ru_maxrss of the only child waited for).
MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def write_song(path: Path, minutes: float, seed: int = 0, block_seconds: int = 30) -> None:
    """Stereo noise with a slow level envelope, written in blocks (the writer's memory stays small)."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=2, subtype="PCM_16") as out:
        total = int(minutes * 60 * RATE)
        for start in range(0, total, block_seconds * RATE):
            n = min(block_seconds * RATE, total - start)
            envelope = 0.2 + 0.1 * np.sin(2 * np.pi * (start + np.arange(n)) / (3 * RATE))
            out.write((rng.standard_normal((n, 2)) * envelope[:, None] * 0.5).astype(np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="checkpoint to separate with (default: train the smoke model)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-separate-"))
    env = os.environ | {"WANDB_MODE": "disabled"}
    ckpt = args.ckpt
    if ckpt is None:
        subprocess.run([script("msslab-train"), "experiment=smoke", "logger=none", f"hydra.run.dir={work / 'smoke'}"],
                       cwd=work, env=env, check=True, capture_output=True)
        ckpt = str(work / "smoke" / "checkpoints" / "last.ckpt")
    print(f"checkpoint {ckpt}, device {args.device}, 44.1 kHz stereo input")
    print(f"{'minutes':>8s} {'peak RSS MB':>12s} {'wall s':>8s} {'RSS x first':>12s}")
    first = None
    for minutes in args.minutes:
        song = work / f"song{minutes:g}.wav"
        write_song(song, minutes)
        command = [script("msslab-separate"), f"ckpt={ckpt}", f"input={song}", f"output={work / 'out'}",
                   "overwrite=true", f"device={args.device}"]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEASURE, *command], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"msslab-separate failed:\n{done.stderr[-3000:]}")
        peak_mb = int(done.stdout.strip().splitlines()[-1]) / 1024
        first = first or peak_mb
        print(f"{minutes:8g} {peak_mb:12.0f} {seconds:8.1f} {peak_mb / first:12.2f}", flush=True)
        song.unlink()


if __name__ == "__main__":
    main()
