"""Where a GPU run spends its time: model step, training loop, data wait, device busy share, evaluation.

For one preset (default: the UMX-size BLSTM at 44.1 kHz on a GPU) it prints

1. the pure training step (forward, backward, Adam on one batch already on the device);
2. for ``augmentation=[]`` and ``augmentation=all`` with each ``augmentation.placement``
   the config knows (``loader``, ``device``; unknown placements are skipped), a whole
   ``msslab-train`` run (``--epochs`` epochs, then ``--tracks`` test tracks): the training
   loop's steps/s and its ratio to the pure step, the share of loop time spent waiting
   for data, the run's wall time and the GPU busy share over all of it (sampled from
   NVML through ``torch.cuda.utilization``; needs ``nvidia-ml-py``);
3. seconds per test track, split into separation (``msslab.separation.inference``) and metric (museval);
4. seconds to separate a 3-minute stereo track at the preset's rate.

    python benchmarks/bench_gpu.py                          # on a GPU, the UMX-size preset
    python benchmarks/bench_gpu.py --device cpu --tiny      # a dry run on a CPU (smoke-size model)
    python benchmarks/bench_gpu.py -- separation.batch_size=8 data.num_workers=14   # extra overrides

Times are wall-clock seconds; device work is synchronised before every clock read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import open_dict
from omegaconf.errors import OmegaConfBaseException

from msslab import CONFIG_DIR
from msslab.separation.inference import SeparationSettings, separate
from msslab.metric import bsseval
from msslab.system import build_system
from msslab.training import train

CONF = str(CONFIG_DIR)
UMX_PRESET = ("trainer=gpu model=umx data.sample_rate=44100 stft.n_fft=4096 stft.hop_length=1024 stft.max_freq=16000 "
              "data.chunk_seconds=6")
TINY_PRESET = "experiment=smoke"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Times each training step and the gap before it (waiting for the loader) within epochs."""

    runs: list[dict] = []  # one entry per fit, read by the benchmark

    def on_train_start(self, trainer, pl_module):
        self.steps, self.waits, self.last_end = [], [], None
        StepTimer.runs.append({"steps": self.steps, "waits": self.waits})

    def on_train_epoch_start(self, trainer, pl_module):
        self.last_end = None  # the gap after validation is not a data wait

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()
        if self.last_end is not None:
            self.waits.append(self.start - self.last_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(pl_module.device)
        self.last_end = time.perf_counter()
        self.steps.append(self.last_end - self.start)


class BusySampler:
    """Samples the GPU's utilisation (NVML, percent of time a kernel ran) every ``period`` seconds."""

    def __init__(self, device: torch.device, period: float = 0.1):
        self.device, self.period, self.samples = device, period, []
        self.available = device.type == "cuda"
        if self.available:
            try:
                torch.cuda.utilization(device)
            except Exception:  # no pynvml (pip install nvidia-ml-py) or no NVML
                self.available = False

    def __enter__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if self.available:
            self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(self.period):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc):
        self.stop.set()
        if self.available:
            self.thread.join()

    def share(self) -> str:
        if not self.samples:
            return "n/a (no CUDA device or no nvidia-ml-py)"
        return f"{statistics.mean(self.samples):.0f} %"


def compose_cfg(overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def pure_step_seconds(cfg, device: torch.device, steps: int) -> tuple[float, tuple]:
    """Mean seconds of forward + backward + Adam on one random batch of the preset's shape, on ``device``."""
    sr, batch_size = cfg.data.sample_rate, cfg.data.batch_size
    frames = int(round(cfg.data.chunk_seconds * sr))
    targets = list(cfg.data.targets)
    system = build_system(cfg, targets, nb_channels=2, residual=False).to(device).train()
    optimizer = system.optimizer_factory(system.parameters())
    mixture_targets = torch.randn(batch_size, len(targets), 2, frames, device=device) * 0.1
    batch = (mixture_targets.sum(1), mixture_targets)
    bf16 = "bf16" in str(cfg.trainer.get("precision", ""))
    for i in range(steps + 2):  # two warm-up steps (cuDNN plans, allocator)
        if i == 2:
            sync(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = system._step(batch)
        loss.backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / steps, tuple(batch[0].shape)


def whole_run(overrides: list[str], work: Path, device: torch.device) -> dict:
    """One ``msslab-train`` run in this process, with the step timer and the busy sampler."""
    cfg = compose_cfg(overrides, work)
    with open_dict(cfg):
        cfg.callbacks.bench_timer = {"_target_": f"{__name__}.StepTimer"}
    start = time.perf_counter()
    with BusySampler(device) as sampler:
        record = train(cfg)
    wall = time.perf_counter() - start
    timer = StepTimer.runs[-1]
    steps, waits = sum(timer["steps"]), sum(timer["waits"])
    loop = steps + waits
    return {"steps_per_s": len(timer["steps"]) / loop if loop else float("nan"),
            "wait_share": waits / loop if loop else float("nan"), "wall": wall, "busy": sampler.share(),
            "train_s": record["train_seconds"], "eval_s": record["eval_seconds"]}


def track_split(cfg, device: torch.device, tracks: int) -> list[tuple[float, float, float]]:
    """``(audio seconds, separation s, metric s)`` per test track (an untrained model: timing only)."""
    with open_dict(cfg):  # only the test tracks are needed
        cfg.data.train_tracks.nb_tracks, cfg.data.valid_tracks.nb_tracks = 1, 1
        cfg.data.test_tracks.nb_tracks = tracks
    datamodule = instantiate(cfg.data, augmentation=None)
    datamodule.setup("test")
    system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual=False).to(device).eval()
    settings = SeparationSettings.resolve(cfg.separation)
    rows = []
    for i in range(min(tracks, len(datamodule.test_tracks))):
        name, mixture, targets = datamodule.test_track(i)
        sync(device)
        start = time.perf_counter()
        estimates = separate(system, mixture, settings)
        sync(device)
        separated = time.perf_counter()
        bsseval.score_track(name, system.targets, targets.permute(0, 2, 1).numpy(), estimates.permute(0, 2, 1).numpy(),
                            sample_rate=datamodule.sample_rate, win_seconds=cfg.metric.win_seconds,
                            hop_seconds=cfg.metric.hop_seconds)
        rows.append((mixture.shape[-1] / datamodule.sample_rate, separated - start, time.perf_counter() - separated))
    return rows


def three_minutes(cfg, device: torch.device, repeats: int = 3) -> float:
    """Best of ``repeats`` seconds to separate 3 minutes of stereo audio at the preset's rate."""
    sr = cfg.data.sample_rate
    system = build_system(cfg, list(cfg.data.targets), 2, residual=False).to(device).eval()
    settings = SeparationSettings.resolve(cfg.separation)
    mixture = torch.randn(2, 180 * sr) * 0.1
    separate(system, mixture[:, : 10 * sr], settings)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        separate(system, mixture, settings)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help=f"the smoke-size preset ({TINY_PRESET}) for a dry run")
    parser.add_argument("--preset", default=None, help=f"space-separated overrides (default: {UMX_PRESET})")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each whole run")
    parser.add_argument("--tracks", type=int, default=4, help="test tracks of each whole run and of the split")
    parser.add_argument("--steps", type=int, default=10, help="timed pure steps")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, after --")
    args = parser.parse_args()
    device = torch.device(args.device)
    preset = (args.preset or (TINY_PRESET if args.tiny else UMX_PRESET)).split()
    if device.type == "cpu":
        preset = [o for o in preset if not o.startswith("trainer=")] + (["trainer=cpu"] if not args.tiny else [])
    elif args.tiny:  # the smoke trainer is a CPU one
        preset.append("trainer.accelerator=gpu")
    base = [*preset, "logger=none", *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}\npreset: {' '.join(base)}\n")

    cfg = compose_cfg(base, work / "probe")
    step, shape = pure_step_seconds(cfg, device, args.steps)
    print(f"pure step: {step:.4f} s ({1 / step:.2f} steps/s) on a batch of {shape} samples"
          f"{' (bf16 autocast)' if 'bf16' in str(cfg.trainer.get('precision', '')) else ''}\n")

    variants = {"augmentation=[]": ["augmentation=[]"]}
    for placement in ("loader", "device"):
        overrides = ["augmentation=all", f"augmentation.placement={placement}"]
        try:
            compose_cfg([*base, *overrides], work / "probe")
        except (HydraException, OmegaConfBaseException):
            print(f"augmentation.placement={placement}: not known to this config, skipped")
            continue
        variants[f"all, placement={placement}"] = overrides
    if len(variants) == 1:
        variants["augmentation=all"] = ["augmentation=all"]
    whole = [f"trainer.max_epochs={args.epochs}", f"data.test_tracks.nb_tracks={args.tracks}"]
    print(f"{'whole run':28s} {'steps/s':>8s} {'x pure':>7s} {'data wait':>10s} {'train s':>8s} {'eval s':>7s} "
          f"{'wall s':>7s}  GPU busy")
    for i, (label, overrides) in enumerate(variants.items()):
        row = whole_run([*base, *overrides, *whole], work / f"run{i}", device)
        print(f"{label:28s} {row['steps_per_s']:8.2f} {row['steps_per_s'] * step:7.2f} {100 * row['wait_share']:9.1f}% "
              f"{row['train_s']:8.1f} {row['eval_s']:7.1f} {row['wall']:7.1f}  {row['busy']}", flush=True)

    print(f"\nper test track (separation.* = {SeparationSettings.resolve(cfg.separation).as_dict()}):")
    print(f"{'track':>5s} {'audio s':>8s} {'separate s':>11s} {'metric s':>9s}")
    rows = track_split(compose_cfg(base, work / "split"), device, args.tracks)
    for i, (audio, sep, metric) in enumerate(rows):
        print(f"{i:5d} {audio:8.1f} {sep:11.3f} {metric:9.2f}")
    print(f"{'mean':>5s} {statistics.mean(r[0] for r in rows):8.1f} {statistics.mean(r[1] for r in rows):11.3f} "
          f"{statistics.mean(r[2] for r in rows):9.2f}")

    seconds = three_minutes(cfg, device)
    print(f"\n3-minute stereo track at {cfg.data.sample_rate} Hz: separated in {seconds:.3f} s "
          f"({180 / seconds:.0f}x real time)")


if __name__ == "__main__":
    main()
