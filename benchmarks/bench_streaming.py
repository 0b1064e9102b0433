"""Real-time factor of streaming separation (msslab.separation.streaming.Streamer) on one CPU thread.

For each causal preset (composed from conf/ like a real run, randomly initialised: the
cost does not depend on the weights) and each block size from one hop to 100 ms, streams
``--seconds`` of noise block by block and prints the mean and the 99th percentile of the
time per block divided by the block's duration (the real-time factor, RTF: below 1 keeps
up with real time), with the algorithmic latency. ``x hop`` is the mean RTF over that of
the one-hop block of the same preset, measured in the same run. ``CPU RTF`` counts the
thread's CPU time instead of wall time: on a machine shared with other work it shows the
cost without the time spent waiting for a core, and ``RTF min`` (the fastest block) is
closest to the cost on an idle core.

    python benchmarks/bench_streaming.py [--seconds 10] [--presets lstm gru bsrnn-causal umx-causal]
        [--wiener-context-ms 100] [--one-hop]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from msslab import CONFIG_DIR
from msslab.separation.streaming import Streamer
from msslab.system import build_system

CONF = str(CONFIG_DIR)
TARGETS = ["vocals", "drums", "bass", "other"]
PRESETS = {  # name: overrides of the train config
    "lstm": ["model=lstm"],
    "bsrnn-causal": ["model=bsrnn", "model.bidirectional=false", "loss=bsrnn"],  # complex masks
    "gru": ["model=gru"],
    "umx-causal": ["model=umx", "model.bidirectional=false", "data.sample_rate=44100", "stft.n_fft=4096",
                   "stft.hop_length=1024"],
}


def build(overrides, wiener_iterations: int = 0):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", f"paths.output_dir={tempfile.gettempdir()}", *overrides])
    separator = build_system(cfg, TARGETS, nb_channels=2, residual=False).separator.eval()
    return separator.replace(wiener_iterations=wiener_iterations)


def block_sizes(hop: int, rate: int) -> list[int]:
    """One hop, then 10, 20, 50 and 100 ms (those above one hop)."""
    return [hop] + [round(ms * rate / 1000) for ms in (10, 20, 50, 100) if ms * rate / 1000 > hop]


def rtf(streamer: Streamer, block: int, seconds: float) -> tuple[float, float, float, float]:
    """Per block over the block duration: wall time (mean, 99th percentile, minimum), this thread's CPU time (mean)."""
    rate = streamer.sample_rate
    audio = np.random.default_rng(0).standard_normal((streamer.nb_channels, int(seconds * rate))).astype(np.float32)
    streamer.reset()
    for start in range(0, rate // 2, block):  # warm-up (allocations, the first frames): half a second
        streamer.process(audio[:, start: start + block])
    times = []
    cpu = time.thread_time()
    for start in range(0, audio.shape[-1] - block + 1, block):
        tic = time.perf_counter()
        streamer.process(audio[:, start: start + block])
        times.append(time.perf_counter() - tic)
    cpu = time.thread_time() - cpu
    streamer.flush()
    times = np.array(times) / (block / rate)
    return float(times.mean()), float(np.percentile(times, 99)), float(times.min()), cpu / (len(times) * block / rate)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio streamed per block size")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wiener-context-ms", type=float, default=None,
                        help="also time the causal Wiener filter (1 iteration) over this much past")
    parser.add_argument("--one-hop", action="store_true", help="time blocks of one hop only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.seconds:g} s streamed per row, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'preset':13s} {'rate Hz':>7s} {'n_fft':>5s} {'hop':>5s} {'latency ms':>10s} {'block':>6s} {'block ms':>8s} "
          f"{'RTF':>7s} {'RTF p99':>7s} {'x hop':>6s} {'CPU RTF':>7s} {'RTF min':>7s}")
    runs = [(name, Streamer(build(PRESETS[name]))) for name in args.presets]
    if args.wiener_context_ms:
        for name in args.presets:
            system = build(PRESETS[name], wiener_iterations=1)
            frames = math.ceil(args.wiener_context_ms * system.spectrogram.sample_rate / 1000
                               / system.spectrogram.hop_length)
            runs.append((f"{name}+wiener", Streamer(system, wiener_context_frames=frames)))
    for name, streamer in runs:
        rate, hop = streamer.sample_rate, streamer.hop
        baseline = None
        for block in [hop] if args.one_hop else block_sizes(hop, rate):
            mean, p99, least, cpu = rtf(streamer, block, args.seconds)
            baseline = baseline or mean
            print(f"{name:13s} {rate:7d} {streamer.n_fft:5d} {hop:5d} {streamer.latency_ms:10.1f} {block:6d} "
                  f"{1000 * block / rate:8.1f} {mean:7.3f} {p99:7.3f} {mean / baseline:6.2f} {cpu:7.3f} {least:7.3f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
