"""Training-step and inference speed of the RNN variants, and museval's cost.

Prints, for each model preset (composed from conf/ like a real run), the
parameter count, the mean time of a training step (forward, backward, Adam) at
the default batch and chunk size, and its ratio to the default ``blstm`` measured
in the same run; then the time to separate and to score one default test track.

    python benchmarks/bench_model.py [--steps 5] [--models lstm gru blstm bgru umx]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from msslab import CONFIG_DIR
from msslab.separation.inference import SeparationSettings, separate
from msslab.metric import bsseval
from msslab.system import build_system

CONF = str(CONFIG_DIR)


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["logger=none", f"paths.output_dir={tempfile.gettempdir()}", *overrides])


def step_seconds(system, batch, steps: int) -> float:
    optimizer = torch.optim.Adam(system.parameters())
    system.train()
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        loss, _ = system._step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["blstm", "bgru", "lstm", "gru"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    cfg = compose_cfg([])
    datamodule = instantiate(cfg.data, augmentation=None)
    datamodule.setup("fit")
    batch = next(iter(torch.utils.data.DataLoader(datamodule.train_set, batch_size=cfg.data.batch_size)))
    print(f"batch: {tuple(batch[0].shape)} mixture samples at {datamodule.sample_rate} Hz")

    baseline = None
    print(f"{'model':8s} {'params':>10s} {'step s':>8s} {'x blstm':>8s}")
    for name in ["blstm"] + [m for m in args.models if m != "blstm"]:
        cfg = compose_cfg([f"model={name}"])
        system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual=False)
        seconds = step_seconds(system, batch, args.steps)
        baseline = baseline or seconds
        params = sum(p.numel() for p in system.model.parameters())
        print(f"{name:8s} {params:10,d} {seconds:8.3f} {seconds / baseline:8.2f}")

    cfg = compose_cfg([])
    system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual=False).eval()
    track, mixture, targets = datamodule.test_track(0)
    seconds_audio = mixture.shape[-1] / datamodule.sample_rate
    start = time.perf_counter()
    estimates = separate(system, mixture, SeparationSettings.resolve(cfg.separation))
    separate_s = time.perf_counter() - start
    start = time.perf_counter()
    bsseval.score_track(track, system.targets, targets.permute(0, 2, 1).numpy(), estimates.permute(0, 2, 1).numpy(),
                        datamodule.sample_rate, backend="museval")
    museval_s = time.perf_counter() - start
    print(f"one test track ({seconds_audio:.0f} s, {len(system.targets)} targets): separate {separate_s:.2f} s, "
          f"museval {museval_s:.2f} s ({museval_s / separate_s:.0f}x separation)")


if __name__ == "__main__":
    main()
