"""Parameter count and training-step time of the band-split RNN beside the BLSTM presets.

Each model is composed from conf/ like a real run (``model=<preset>`` plus overrides) and
timed for a full training step (STFT, forward, loss, backward, Adam) on random stereo
audio with 4 targets, at one and at two threads. The paper's BSRNN (N=128, K=12) at its
STFT (44.1 kHz, n_fft 2048, hop 512, 3 s chunks) takes seconds per example on a CPU, so it
is timed at small batches; the paper trains at batch 16 on GPUs.

    python benchmarks/bench_bsrnn.py [--steps 3] [--threads 1 2] [--only paper small]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from msslab import CONFIG_DIR
from msslab.system import build_system

CONF = str(CONFIG_DIR)
SOURCES = ["vocals", "drums", "bass", "other"]
# The band-split paper's front end: 44.1 kHz, n_fft 2048 / hop 512, 3 s chunks.
PAPER_STFT = ["data.sample_rate=44100", "stft.n_fft=2048", "stft.hop_length=512"]
PAPER_SIZE = ["model.hidden_size=128", "model.nb_layers=12", "model.rnn_size=null", "model.mask_hidden=null"]

# name: (overrides, batch size, chunk seconds)
CASES = {
    "paper": (["model=bsrnn", "loss=bsrnn", *PAPER_STFT, *PAPER_SIZE], 1, 3.0),
    "paper-b2": (["model=bsrnn", "loss=bsrnn", *PAPER_STFT, *PAPER_SIZE], 2, 3.0),
    "paper-separate": (["model=bsrnn", "loss=bsrnn", *PAPER_STFT, *PAPER_SIZE, "model.targets=separate"], 1, 3.0),
    "small": (["model=bsrnn", "loss=bsrnn", *PAPER_STFT], 4, 3.0),
    "small-separate": (["model=bsrnn", "loss=bsrnn", *PAPER_STFT, "model.targets=separate"], 4, 3.0),
    "small-causal": (["model=bsrnn", "loss=bsrnn", *PAPER_STFT, "model.bidirectional=false"], 4, 3.0),
    "cpu": (["experiment=bsrnn_cpu", "augmentation=[]"], 4, 3.0),  # the CPU recipe (one network per target)
    "cpu-shared": (["experiment=bsrnn_cpu", "augmentation=[]", "model.targets=shared"], 4, 3.0),  # before 8 Dec 2026
    "fullband": (["experiment=fullband", "augmentation=[]"], 4, 3.0),  # the BLSTM recipe it is compared with
    "blstm": (["model=blstm", *PAPER_STFT], 4, 3.0),
    "umx": (["model=umx", *PAPER_STFT], 4, 3.0),
}


def build(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", f"paths.output_dir={tempfile.gettempdir()}", *overrides])
    torch.manual_seed(0)
    return build_system(cfg, SOURCES, nb_channels=2, residual=False), cfg.data.sample_rate


def step_seconds(system, batch, steps: int) -> tuple[float, float]:
    """Mean wall seconds and process CPU seconds of a training step, after one warm-up step.

    On a shared machine the wall time grows with the other processes' load; the CPU time
    (user + system, all threads) much less, so at one thread it is the number to compare.
    """
    optimizer = torch.optim.Adam(system.parameters())
    system.train()
    wall = cpu = 0.0
    for i in range(steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss, _ = system._step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            wall += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
    return wall / steps, cpu / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()
    print(f"torch {torch.__version__}; stereo, {len(SOURCES)} targets, 44.1 kHz, n_fft 2048 / hop 512")
    print("per training step: wall seconds / process CPU seconds, at each thread count; load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"{'case':16s} {'params':>11s} {'batch':>9s} " + " ".join(f"{f'{t} thr wall/cpu':>16s}" for t in args.threads))
    for name in args.only:
        overrides, batch_size, seconds = CASES[name]
        system, sample_rate = build(overrides)
        params = sum(p.numel() for p in system.model.parameters())
        g = torch.Generator().manual_seed(0)
        targets = torch.randn(batch_size, len(SOURCES), 2, int(seconds * sample_rate), generator=g) * 0.1
        batch = (targets.sum(1), targets)
        timings = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            timings.append(step_seconds(system, batch, args.steps))
        print(f"{name:16s} {params:11,d} {f'{batch_size}x{seconds:g}s':>9s} "
              + " ".join(f"{f'{w:.2f} / {c:.2f}':>16s}" for w, c in timings), flush=True)
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
