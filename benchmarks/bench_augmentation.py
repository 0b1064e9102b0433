"""How fast is training-time augmentation, and does data loading keep up with training?

    python benchmarks/bench_augmentation.py                 # all parts
    python benchmarks/bench_augmentation.py --no-training   # throughput only (both placements)
    python benchmarks/bench_augmentation.py --no-training --device cuda --batch 16 --chunk-seconds 6

Part 1, throughput: training examples of the default data config (synthetic,
4 stereo sources) are drawn, augmented and mixed in this process, one CPU
thread, for no augmentation and for each augmentation alone (as configured and
at p = 1) and for ``all``. It prints seconds of audio (example length) per CPU
second for the whole example and for the augmentation alone, and the cost
relative to no augmentation, all measured in the same run.

Part 1b, device placement (``augmentation.placement=device``): the same rows, split
into what a loader worker still does (load the chunk and draw the parameters, one
CPU thread, CPU time) and the batched stages on ``--device`` (``--batch`` examples
per call, wall time, synchronised; on the CPU one thread, CPU time), both in seconds
of example audio per second, measured in the same run as part 1.

Part 2, data-wait share: a real training run of the default model with the
default data loader (worker processes), once without augmentation and once with
``augmentation=all``. A Lightning callback times how long each step waits for
its batch (previous ``on_train_batch_end`` to ``on_train_batch_start``) against
the whole step; the first steps (worker start-up) are not counted. On a small
CPU the workers also take cores from the training process, so compare the step
times of the two runs too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from msslab import CONFIG_DIR

CONF = str(CONFIG_DIR)
EACH = ["gain", "channel_swap", "time_stretch", "pitch_shift", "reverb", "background_noise"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def datamodule(overrides: list[str]):
    from hydra.utils import instantiate

    cfg = compose(overrides)
    dm = instantiate(cfg.data, augmentation=cfg.get("augmentation"))
    dm.setup("fit")
    return cfg, dm


def throughput(args) -> None:
    import torch

    torch.set_num_threads(1)
    data = [f"data.train_tracks.nb_tracks={args.tracks}", f"data.sample_rate={args.sample_rate}",
            f"data.chunk_seconds={args.chunk_seconds}"]
    _, dm = datamodule(data)
    chunk_s = dm.chunk_frames / dm.sample_rate
    tracks, groups = dm.train_tracks, dm.groups
    print(f"\n## Throughput: {dm.sample_rate} Hz, {len(dm.sources)} sources x {dm.nb_channels} channels, "
          f"{chunk_s:g} s examples, {args.examples} examples each, 1 thread, CPU time")
    print(f"{'augmentation':<34}{'example audio s / CPU s':>24}{'augment only':>16}{'x no-aug cost':>15}")

    from msslab.augmentation import build_pipeline, stage_names
    from msslab.data.datamodule import mix_example

    rng = np.random.default_rng(0)
    # The same chunks for every row, loaded once (SyntheticTracks caches tracks anyway).
    offsets = [(int(rng.integers(len(tracks))), None) for _ in range(args.examples)]
    offsets = [(i, int(rng.integers(tracks.num_frames(i) - dm.chunk_frames + 1))) for i, _ in offsets]

    for index, offset in offsets:  # first touch of the audio (page faults) before any row is timed
        mix_example(tracks.load(index, offset, dm.chunk_frames), groups)
    rows = [("none", [], False)]
    rows += [(name, [f"augmentation=[{name}]"], False) for name in EACH]
    rows += [(f"{name} (p=1)", [f"augmentation=[{name}]"], True) for name in EACH]
    rows += [("all", ["augmentation=all"], False), ("all (p=1)", ["augmentation=all"], True)]
    base = None
    for label, overrides, forced in rows:
        cfg = compose(data + overrides)
        node = cfg.get("augmentation")
        if forced:
            for name in stage_names(node):
                node[name].p = 1.0
        pipeline = build_pipeline(node, dm.sample_rate)
        rng = np.random.default_rng(1)
        total = augment = 0.0
        for index, offset in offsets:
            start = time.process_time()
            sources = tracks.load(index, offset, dm.chunk_frames)
            middle = time.process_time()
            noise = None
            if pipeline is not None:
                sources, noise = pipeline(sources, rng)
            after = time.process_time()
            mix_example(sources, groups, noise)
            total += time.process_time() - start
            augment += after - middle
        audio = chunk_s * len(offsets)
        base = base or total
        aug_rate = f"{audio / augment:16.1f}" if augment > 0 and pipeline is not None else f"{'-':>16}"
        print(f"{label:<34}{audio / total:24.1f}{aug_rate}{total / base:15.2f}")


def device_throughput(args) -> None:
    import torch
    from torch.utils.data import default_collate

    from msslab.augmentation import DeviceAugmentation, build_pipeline, stage_names
    from msslab.data.datamodule import mix_batch

    device = torch.device(args.device)
    data = [f"data.train_tracks.nb_tracks={args.tracks}", f"data.sample_rate={args.sample_rate}",
            f"data.chunk_seconds={args.chunk_seconds}"]
    _, dm = datamodule(data)
    chunk_s = dm.chunk_frames / dm.sample_rate
    batches = max(1, args.examples // args.batch)
    print(f"\n## Device placement: {dm.sample_rate} Hz, {chunk_s:g} s examples, {batches} batches of {args.batch} "
          f"on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else " (1 thread)"))
    print(f"{'augmentation':<26}{'worker: audio s / CPU s':>25}{'device: audio s / s':>22}{'device ms / example':>21}")
    rows = [(name, [f"augmentation=[{name}]"], True) for name in EACH]
    rows += [("all", ["augmentation=all"], False), ("all (p=1)", ["augmentation=all"], True)]

    def clock():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return time.process_time()

    for label, overrides, forced in rows:
        node = compose(data + overrides).augmentation
        for name in stage_names(node):
            if forced:
                node[name].p = 1.0
        augment = DeviceAugmentation(build_pipeline(node, dm.sample_rate), dm.chunk_frames)
        frames = build_pipeline(node, dm.sample_rate).input_frames(dm.chunk_frames)
        rng = np.random.default_rng(1)
        worker = device_time = 0.0
        for b in range(batches + 1):  # the first batch warms up (kernels, allocator) and is not counted
            start = time.process_time()
            items = []
            for _ in range(args.batch):
                index = int(rng.integers(len(dm.train_tracks)))
                sources = dm.train_tracks.load(index, int(rng.integers(dm.train_tracks.num_frames(index) - frames + 1)),
                                               frames)
                stacked = np.stack(list(sources.values()))
                items.append({"sources": torch.from_numpy(stacked), "params": augment.draw(rng, stacked.shape)})
            batch = default_collate(items)
            if b:
                worker += time.process_time() - start
            batch = {"sources": batch["sources"].to(device), "params": batch["params"]}
            start = clock()
            sources, noise = augment(batch["sources"], batch["params"])
            mix_batch(sources, dm.groups, dm.sources, noise)
            if b:
                device_time += clock() - start
        audio = chunk_s * args.batch * batches
        print(f"{label:<26}{audio / worker:25.1f}{audio / device_time:22.1f}"
              f"{1000 * device_time / (args.batch * batches):21.2f}")


class DataWait:
    """Lightning callback: time each training step waits for its batch vs the whole step."""

    def __init__(self, skip: int):
        import lightning.pytorch as pl

        outer = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                now = time.perf_counter()
                if outer.last_end is not None:
                    outer.waits.append(now - outer.last_end)
                if outer.last_start is not None:
                    outer.steps.append(now - outer.last_start)
                outer.last_start = now

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                outer.last_end = time.perf_counter()

        self.callback, self.skip = _Callback(), skip
        self.waits, self.steps, self.last_end, self.last_start = [], [], None, None

    def share(self) -> tuple[float, float]:
        waits, steps = np.array(self.waits[self.skip:]), np.array(self.steps[self.skip:])
        return float(waits.sum() / steps.sum()), float(steps.mean())


def data_wait(args) -> None:
    import lightning.pytorch as pl

    from msslab.system import build_system, covers_mixture

    print(f"\n## Data-wait share of training: default model, {os.cpu_count()} CPU cores, {args.steps} steps "
          f"(first {args.skip} not counted)")
    print(f"{'augmentation':<16}{'workers':>8}{'batch':>7}{'step s':>10}{'data-wait share':>18}")
    for label, overrides in [("none", []), ("all", ["augmentation=all"])]:
        with tempfile.TemporaryDirectory() as out:
            # One epoch holds all steps (an epoch boundary restarts the workers' prefetching);
            # no validation, so no plateau scheduler either.
            batch = compose([]).data.batch_size
            per_track = -(-(args.steps + args.skip) * batch // args.tracks) + 1
            cfg, dm = datamodule([f"data.train_tracks.nb_tracks={args.tracks}", f"data.samples_per_track={per_track}",
                                  f"paths.output_dir={out}", "logger=none", "~scheduler", *overrides])
            pl.seed_everything(cfg.seed, workers=True)
            system = build_system(cfg, dm.targets, dm.nb_channels, not covers_mixture(dm.sources, dm.groups))
            system.model.set_input_stats(system.spectrogram(dm.clean_train_examples(16)).abs())
            timer = DataWait(args.skip)
            trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.steps + args.skip, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                 limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer.callback],
                                 default_root_dir=out)
            trainer.fit(system, datamodule=dm)
            share, step = timer.share()
            print(f"{label:<16}{dm.num_workers:>8}{dm.batch_size:>7}{step:10.2f}{100 * share:17.1f}%")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=48, help="examples per throughput row")
    parser.add_argument("--tracks", type=int, default=16, help="synthetic training tracks to generate")
    parser.add_argument("--sample-rate", type=int, default=44100, help="Hz (the throughput parts)")
    parser.add_argument("--chunk-seconds", type=float, default=2.0, help="example length (the throughput parts)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu", help="where the device placement runs")
    parser.add_argument("--batch", type=int, default=16, help="examples per device call")
    parser.add_argument("--no-loader", action="store_true", help="skip part 1 (the loader placement)")
    parser.add_argument("--steps", type=int, default=20, help="training steps counted per run")
    parser.add_argument("--skip", type=int, default=3, help="first training steps not counted")
    parser.add_argument("--no-training", action="store_true", help="throughput only")
    args = parser.parse_args()
    if not args.no_loader:
        throughput(args)
    device_throughput(args)
    if not args.no_training:
        data_wait(args)


if __name__ == "__main__":
    main()
