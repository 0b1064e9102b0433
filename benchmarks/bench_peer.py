"""Peer benchmark: msslab's recipe against Open-Unmix at equal compute, on rendered music.

Both sides train on the same ``data=rendered`` songs for the same budget and are scored
by the same evaluation (msslab's museval BSSEval v4 path on the same whole test songs);
the table puts them beside the oracle IRM (the ceiling of masking) and the mixture (the floor).

- msslab: ``msslab.training.train`` on ``experiment=fullband`` (``--experiment``; plus any overrides given),
  stopped when the budget is spent, then the best checkpoint (validation SDR) is evaluated.
- Open-Unmix: the ``openunmix`` package's model (``OpenUnmix``), transforms and
  ``Separator`` (with its Wiener filter, one EM iteration as in its published models),
  with its published recipe scaled to the budget: one model per target, each trained for
  a quarter of the budget on magnitude MSE with Adam (lr 1e-3, weight decay 1e-5),
  ReduceLROnPlateau (factor 0.3) on the validation loss, the best validation state kept,
  per-source random gain (x 0.25..1.25) and channel swap, 6 s chunks, n_fft 4096 / hop 1024,
  16 kHz bandwidth, input standardised by training-set statistics.

The budget is process CPU time by default (``--clock cpu``: ``time.process_time``, all
threads of this process; data loading runs in the process, ``num_workers=0``), so the
comparison stays fair on a machine shared with other jobs; ``--clock wall`` uses elapsed
time instead. Install the peer with ``pip install -e ".[peer]"``.

    python benchmarks/bench_peer.py --budget-minutes 20          # the issue's budget, per side
    python benchmarks/bench_peer.py --budget-minutes 5 --sides msslab --reuse outputs/bench_peer/<run> model.hidden_size=384
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from machine import describe
from msslab import CONFIG_DIR
from msslab.evaluation import evaluate_system
from msslab.schedule import CLOCKS
from msslab.system import build_system

CONF = str(CONFIG_DIR)
SIDES = ("msslab", "umx", "baselines")


class Budget:
    """Open-Unmix's training budget, read from the clocks msslab's ``budget.clock`` reads:
    process CPU time (``cpu``) or elapsed time (``wall``)."""

    def __init__(self, seconds: float, clock: str):
        self.seconds, self.clock = seconds, clock
        self._now = CLOCKS[clock]
        self._start = None

    def start(self) -> "Budget":
        self._start = self._now()
        return self

    def spent(self) -> float:
        return self._now() - self._start

    def exhausted(self) -> bool:
        return self.spent() >= self.seconds


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides)


# ----------------------------------------------------------------------------- msslab


def run_msslab(base: list[str], extra: list[str], budget_s: float, clock: str, out: Path,
               snapshots: list[float] = ()) -> dict:
    from msslab.runs import checkpoint_dirs
    from msslab.schedule import snapshot_path
    from msslab.system import load_checkpoint
    from msslab.training import train

    # msslab's own time budget (msslab.schedule.TrainingBudget), which scheduler=anneal decays over
    marks = f"[{','.join(f'{m:g}' for m in snapshots)}]"
    cfg = compose_cfg([*base, "trainer.max_epochs=100000", "callbacks.early_stopping.patience=100000",
                       f"budget.minutes={budget_s / 60}", f"budget.clock={clock}", f"budget.snapshots={marks}",
                       f"paths.output_dir={out}", *extra])
    record = train(cfg)
    # The learning curve: the model as it was at each mark, scored like the final one (same songs,
    # metric and separation settings); the weights at the mark, not the best validated ones.
    curve = {}
    if snapshots:
        datamodule = instantiate(cfg.data, augmentation=None)
        datamodule.setup("test")
        for minutes in snapshots:
            path = snapshot_path(checkpoint_dirs(cfg)[0], minutes)  # where TrainingBudget saved it
            # mmap: only the step and epoch are read here; load_checkpoint reads the weights
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            system = load_checkpoint(path, map_location="cpu")
            scores = evaluate_system(system, datamodule, out / f"snapshot_{minutes:g}min", cfg.metric, cfg.separation)
            curve[f"{minutes:g}"] = {"sources": scores["sources"], "global_step": state["global_step"],
                                     "epoch": state["epoch"]}
            print(f"msslab after {minutes:g} min (step {state['global_step']}): "
                  + ", ".join(f"{t} {v['SDR']:.2f}" for t, v in scores["sources"].items()), flush=True)
    return {"sources": record["sources"], "train_seconds": record["train_seconds"], "epochs": record["epochs"],
            "nb_parameters": record["nb_parameters"], "overrides": extra, "snapshots": curve}


# --------------------------------------------------------------------------- Open-Unmix


class UmxSystem(torch.nn.Module):
    """Open-Unmix's Separator behind the interface msslab's evaluation calls (``msslab.separation.Separator``'s)."""

    needs_targets = False

    def __init__(self, separator, targets: list[str], n_fft: int, sample_rate: int):
        super().__init__()
        self.umx, self.targets = separator, list(targets)
        self.spectrogram = SimpleNamespace(n_fft=n_fft, sample_rate=sample_rate)
        self.wiener_exponent = None  # None: the Separator's own Wiener filter

    @property
    def device(self):
        return next(self.umx.parameters()).device

    def replace(self, **settings):
        return self  # msslab's Wiener settings do not apply: Open-Unmix has its own filter

    def forward(self, mixture, targets=None, **separation):
        # msslab's separation settings (Wiener, autocast) do not apply: the Separator has its own Wiener filter
        if self.wiener_exponent is None:
            return self.umx(mixture)
        # --umx-wiener-exponents: Open-Unmix's magnitude estimates through msslab's Wiener filter
        # (one iteration over the whole chunk, soft-mask start) with that spectrogram exponent
        from msslab.model.wiener import wiener

        sep = self.umx
        mix_stft = sep.stft(mixture)  # (B, C, F, T, 2)
        magnitudes = sep.complexnorm(mix_stft)
        v = torch.stack([model(magnitudes) for model in sep.target_models.values()], dim=1)  # (B, S, C, F, T)
        y = wiener(v, torch.view_as_complex(mix_stft.contiguous()), 1, exponent=self.wiener_exponent)
        return sep.istft(torch.view_as_real(y).contiguous(), length=mixture.shape[-1])


def train_umx_target(datamodule, j: int, args, budget: Budget, encoder) -> tuple[torch.nn.Module, dict]:
    from openunmix.model import OpenUnmix
    from openunmix.utils import bandwidth_to_max_bin

    # Input statistics as Open-Unmix computes them: per bin, over frames of the (mono) mixture magnitude.
    examples = encoder(datamodule.clean_train_examples(64)).mean(1)  # (B, F, T)
    frames = examples.permute(0, 2, 1).reshape(-1, examples.shape[1]).double()
    mean, std = frames.mean(0).numpy(), frames.std(0).clamp_min(1e-4).numpy()
    rate = datamodule.sample_rate
    model = OpenUnmix(nb_bins=args.umx_n_fft // 2 + 1, nb_channels=2, hidden_size=args.umx_hidden, nb_layers=3,
                      max_bin=int(bandwidth_to_max_bin(rate, args.umx_n_fft, 16000)), input_mean=mean, input_scale=std)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=args.umx_patience)
    best, best_loss, steps, epochs = None, float("inf"), 0, 0
    budget.start()
    while not budget.exhausted():
        model.train()
        for mixture, targets in datamodule.train_dataloader():
            loss = torch.nn.functional.mse_loss(model(encoder(mixture)), encoder(targets[:, j].contiguous()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if budget.exhausted():
                break
        model.eval()
        with torch.no_grad():
            losses = [torch.nn.functional.mse_loss(model(encoder(m)), encoder(t[:, j].contiguous())).item()
                      for m, t in datamodule.val_dataloader()]
        valid = float(np.mean(losses))
        scheduler.step(valid)
        epochs += 1
        if valid < best_loss:
            best, best_loss = {k: v.clone() for k, v in model.state_dict().items()}, valid
    model.load_state_dict(best)
    return model.eval(), {"steps": steps, "epochs": epochs, "best_valid_loss": best_loss, "spent_s": budget.spent()}


def run_umx(base: list[str], args, budget_s: float, clock: str, out: Path) -> dict:
    from openunmix.model import Separator
    from openunmix.transforms import ComplexNorm, make_filterbanks

    # Open-Unmix's source augmentations (gain x 0.25..1.25 = -12.04..+1.94 dB, channel swap), through
    # msslab's pipeline so that both sides read the same chunks the same way.
    cfg = compose_cfg([*base, f"paths.output_dir={out}", "augmentation=[gain,channel_swap]",
                       "augmentation.gain.p=1.0", "augmentation.gain.gain_db=[-12.04,1.94]",
                       f"data.chunk_seconds={args.umx_seq_seconds}", f"data.batch_size={args.umx_batch}",
                       f"seed={args.umx_seed}"])
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, augmentation=cfg.get("augmentation"))
    datamodule.setup("fit")
    stft, _ = make_filterbanks(n_fft=args.umx_n_fft, n_hop=args.umx_hop, center=True, sample_rate=datamodule.sample_rate)
    encoder = torch.nn.Sequential(stft, ComplexNorm(mono=False))
    models, info = {}, {}
    for j, target in enumerate(datamodule.targets):
        models[target], info[target] = train_umx_target(datamodule, j, args, Budget(budget_s / len(datamodule.targets), clock), encoder)
        print(f"open-unmix {target}: {info[target]}", flush=True)
    separator = Separator(models, niter=1, sample_rate=datamodule.sample_rate, n_fft=args.umx_n_fft, n_hop=args.umx_hop,
                          nb_channels=2, wiener_win_len=300)
    separator.freeze()
    system = UmxSystem(separator, datamodule.targets, args.umx_n_fft, datamodule.sample_rate)
    results = evaluate_system(system, datamodule, out, cfg.metric, cfg.separation)
    # The same trained models separated through msslab's Wiener filter at each exponent asked for.
    by_exponent = {}
    for exponent in args.umx_wiener_exponents:
        system.wiener_exponent = exponent
        scores = evaluate_system(system, datamodule, out / f"wiener_exponent_{exponent:g}", cfg.metric, cfg.separation)
        by_exponent[f"{exponent:g}"] = scores["sources"]
        print(f"open-unmix, msslab's Wiener filter with exponent {exponent:g}: "
              + ", ".join(f"{t} {s['SDR']:.2f}" for t, s in scores["sources"].items()), flush=True)
    return {"sources": results["sources"], "targets": info, "wiener_exponent": by_exponent,
            "nb_parameters": sum(p.numel() for p in separator.parameters())}


def run_baselines(base: list[str], out: Path) -> dict:
    rows = {}
    for model in ("oracle_irm", "mixture"):
        cfg = compose_cfg([*base, f"model={model}", f"paths.output_dir={out / model}"])
        datamodule = instantiate(cfg.data, augmentation=None)
        datamodule.setup("test")
        system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual=False)
        rows[model] = {"sources": evaluate_system(system, datamodule, out / model, cfg.metric, cfg.separation)["sources"]}
    return rows


# ------------------------------------------------------------------------------ report


def table(results: dict) -> str:
    if not results:
        return "(no results)"
    columns = [(name, label) for name, label in (("msslab", "msslab"), ("umx", "Open-Unmix"), ("oracle_irm", "oracle IRM"),
                                                 ("mixture", "mixture")) if name in results]
    sources = next(iter(results.values()))["sources"]
    lines = []
    for metric in ("SDR", "SIR"):
        head = [f"{label} {metric}" for _, label in columns]
        both = "msslab" in results and "umx" in results
        lines.append(f"| source | {' | '.join(head)}{' | msslab - Open-Unmix' if both else ''} |")
        lines.append("| --- |" + " ---: |" * (len(columns) + both))
        for source in sources:
            values = [results[name]["sources"][source][metric] for name, _ in columns]
            delta = f" | {results['msslab']['sources'][source][metric] - results['umx']['sources'][source][metric]:+.2f}" if both else ""
            lines.append(f"| {source} | {' | '.join(f'{v:.2f}' for v in values)}{delta} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the msslab side and the baselines (after experiment=...)")
    parser.add_argument("--experiment", default="fullband", help="msslab's recipe (an experiment preset on data=rendered)")
    parser.add_argument("--song-seed", type=int, default=None,
                        help="seed of the rendered songs (default: the data config's): a song set no tuning saw")
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="training budget per side (minutes)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: process CPU time, all threads (default, fair on a shared machine); wall: elapsed")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: no CPU time is spent spinning in thread pools on a busy machine)")
    parser.add_argument("--sides", default=",".join(SIDES), type=lambda text: [t for t in text.split(",") if t],
                        help=f"comma-separated, any of {','.join(SIDES)} (default: all; empty: only --reuse's)")
    parser.add_argument("--snapshots", default=[], type=lambda text: [float(t) for t in text.split(",") if t],
                        help="msslab side: also score the model as it was after these minutes of the budget "
                        "(e.g. 5,10,20: a learning curve against compute; recorded under msslab.snapshots)")
    parser.add_argument("--songs", type=int, default=40, help="rendered training songs (10%% held out for validation)")
    parser.add_argument("--test-songs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of every song")
    parser.add_argument("--cache-dir", default=None, help="rendered-song cache (default: data.cache_dir)")
    parser.add_argument("--umx-hidden", type=int, default=512, help="Open-Unmix LSTM width (published: 512)")
    parser.add_argument("--umx-batch", type=int, default=16, help="published: 16")
    parser.add_argument("--umx-seq-seconds", type=float, default=6.0, help="published: 6")
    parser.add_argument("--umx-n-fft", type=int, default=4096)
    parser.add_argument("--umx-hop", type=int, default=1024)
    parser.add_argument("--umx-patience", type=int, default=3, help="ReduceLROnPlateau patience in epochs")
    parser.add_argument("--umx-seed", type=int, default=42, help="Open-Unmix's seed (msslab's: the override seed=N)")
    parser.add_argument("--umx-wiener-exponents", default=[],
                        type=lambda text: [float(t) for t in text.split(",") if t],
                        help="also score Open-Unmix's models through msslab's Wiener filter at these spectrogram "
                        "exponents (e.g. 2,1.25: recorded under umx.wiener_exponent; the table keeps its own filter)")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/bench_peer/<date_time>)")
    parser.add_argument("--reuse", action="append", default=[], help="a previous run's output folder (repeatable): show "
                        "its results of the sides not run now (same songs and budget: e.g. msslab overrides against "
                        "one Open-Unmix run)")
    args = parser.parse_args()
    unknown = [side for side in args.sides if side not in SIDES]
    if unknown:
        parser.error(f"--sides: unknown {unknown}; choose from {list(SIDES)}")

    out = Path(args.out or f"outputs/bench_peer/{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(args.threads)
    budget_s = args.budget_minutes * 60
    # Same songs, same test set, same evaluation for every side; loading in this process (counted).
    # Both sides with the C library's malloc settings: keep_freed_memory would speed up
    # Open-Unmix's steps more than msslab's (bench_allocator.py), and the package runs without it.
    base = [f"experiment={args.experiment}", "logger=none", "keep_freed_memory=false", f"data.nb_train={args.songs}",
            f"data.nb_test={args.test_songs}", f"data.seconds={args.seconds}", "data.num_workers=0",
            "trainer.enable_progress_bar=false"]
    if args.cache_dir:
        base.append(f"data.cache_dir={args.cache_dir}")
    if args.song_seed is not None:
        base.append(f"data.song_seed={args.song_seed}")
    started = time.perf_counter()
    datamodule = instantiate(compose_cfg([*base, f"paths.output_dir={out}"]).data, augmentation=None)
    datamodule.setup("fit")  # renders the songs once (cached)
    render = json.loads((Path(datamodule.train_tracks.root) / "render.json").read_text())
    print(f"data: {render['songs']} songs of {args.seconds:g} s at {datamodule.sample_rate} Hz in {datamodule.train_tracks.root} "
          f"({(render.get('wall_seconds_per_music_minute') or float('nan')):.1f} s per minute of music when rendered)", flush=True)

    results = {}
    for folder in args.reuse:
        previous = json.loads((Path(folder) / "results.json").read_text())
        if previous["args"]["budget_minutes"] != args.budget_minutes or previous["render"]["key"] != render["key"]:
            raise SystemExit(f"error: --reuse {folder} ran another budget or other songs")
        results |= {k: v for k, v in previous["results"].items() if k not in args.sides and not (
            "baselines" in args.sides and k in ("oracle_irm", "mixture"))}

    def save(header: str | None = None):  # after every side, so a stopped run keeps what it measured
        (out / "results.json").write_text(json.dumps({"args": vars(args), "header": header, "results": results,
                                                      "render": render}, indent=2, default=str))

    if "baselines" in args.sides:
        results |= run_baselines([*base, *args.overrides], out / "baselines")  # the ceiling of the recipe run here
        save()
    if "umx" in args.sides:
        results["umx"] = run_umx(base, args, budget_s, args.clock, out / "umx")
        save()
    if "msslab" in args.sides:
        results["msslab"] = run_msslab(base, args.overrides, budget_s, args.clock, out / "msslab", args.snapshots)
        save()
    header = (f"budget {args.budget_minutes:g} min of {'process CPU time' if args.clock == 'cpu' else 'wall-clock time'} "
              f"per side; {len(datamodule.train_tracks)} training + {len(datamodule.valid_tracks)} validation + "
              f"{len(datamodule.test_tracks)} test songs of {args.seconds:g} s at {datamodule.sample_rate} Hz; "
              f"{describe()}; benchmark wall time {time.perf_counter() - started:.0f} s")
    overrides = results["msslab"]["overrides"] if "msslab" in results else args.overrides
    text = f"{header}\nmsslab: experiment={args.experiment} {' '.join(overrides)}\n\n{table(results)}"
    print(text, flush=True)
    (out / "table.md").write_text(text)
    save(header)
    print(f"written: {out / 'table.md'}, {out / 'results.json'}")


if __name__ == "__main__":
    main()
