"""BSSEval v4 speed: museval against msslab's torch backend, with their agreement.

For 4-source stereo tracks at 44.1 kHz (msslab's synthetic music, estimates = each
source plus leakage of the others and noise), prints seconds per track for museval
(the baseline, measured in the same run) and for the torch backend on the CPU with one
thread, with all threads, and on CUDA when present, with the speed-up over museval and
the largest per-window |torch - museval| (dB) and the number of NaN/inf pattern
mismatches beside them.

    python benchmarks/bench_bsseval.py                     # 30 s and 3.5 min tracks
    python benchmarks/bench_bsseval.py --skip-long-museval  # no museval baseline past 60 s
    python benchmarks/bench_bsseval.py --seconds 30 --devices cpu1 cpu
    python benchmarks/bench_bsseval.py --solver stable      # metric.solver's default (one more factorisation)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from machine import describe
from msslab.data.synthetic import generate_track
from msslab.metric import bsseval


def make_track(seconds: float, sample_rate: int, seed: int = 0):
    """References and estimates ``(4, samples, 2)`` float64."""
    stems = generate_track(seed, seconds, sample_rate)
    refs = np.stack([s.T for s in stems.values()]).astype(np.float64)
    rng = np.random.default_rng(seed)
    leak = rng.uniform(0.05, 0.3, (len(refs), len(refs)))
    np.fill_diagonal(leak, 1.0)
    ests = np.einsum("ij,jnc->inc", leak, refs) + 0.01 * refs.std() * rng.standard_normal(refs.shape)
    return refs, ests


def timed(fn, device: torch.device | None = None):
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 210.0], help="track lengths (s)")
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--devices", nargs="+", default=["cpu1", "cpu", "cuda"],
                        help="cpu1 = CPU with one thread, cpu = all threads, cuda (skipped when absent)")
    parser.add_argument("--solver", default="exact", choices=["exact", "stable"],
                        help="torch backend's solve: exact (museval's, the agreement column means it) or stable")
    parser.add_argument("--skip-long-museval", action="store_true",
                        help="no museval baseline for tracks over 60 s (it takes minutes)")
    args = parser.parse_args()

    threads = torch.get_num_threads()
    print(f"{describe()}, CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    win = hop = args.sample_rate
    print(f"{'track':>8} {'backend':>14} {'s/track':>9} {'speed-up':>9} {'max |diff| dB':>14} {'mismatches':>10}")
    for seconds in args.seconds:
        refs, ests = make_track(seconds, args.sample_rate)
        label = f"{seconds:g} s"
        baseline = None
        if not (args.skip_long_museval and seconds > 60):
            museval_s, baseline = timed(lambda: bsseval.bss_eval(refs, ests, win, hop, backend="museval"))
            print(f"{label:>8} {'museval':>14} {museval_s:9.2f} {'1.0x':>9} {'':>14} {'':>10}", flush=True)
        for name in args.devices:
            if name == "cuda" and not torch.cuda.is_available():
                print(f"{label:>8} {'torch cuda':>14} {'not measured (no CUDA device)':>35}")
                continue
            device = torch.device("cpu" if name.startswith("cpu") else name)
            torch.set_num_threads(1 if name == "cpu1" else threads)
            # warm-up (kernels, FFT plans) on a short excerpt, then the track
            bsseval.bss_eval(refs[:, : 3 * win], ests[:, : 3 * win], win, hop, device=device, solver=args.solver)
            seconds_taken, ours = timed(lambda: bsseval.bss_eval(refs, ests, win, hop, device=device,
                                                                 solver=args.solver), device)
            torch.set_num_threads(threads)
            row = f"{label:>8} {'torch ' + name:>14} {seconds_taken:9.2f}"
            if baseline is not None:
                check = bsseval.largest_difference(baseline, ours)
                row += (f" {museval_s / seconds_taken:8.1f}x {check['max_abs_diff_db']:14.2e}"
                        f" {check['pattern_mismatches']:10d}")
            print(row, flush=True)


if __name__ == "__main__":
    main()
