"""The LightningModule: STFT -> separator -> masks -> estimates -> loss, for any separator."""

from __future__ import annotations

import pickle
from collections import defaultdict

import lightning.pytorch as pl
import torch
from torch import nn

from .loss import check_mask_kind
from .metric.sdr import FAST_METRICS
from .model.spectrogram import Spectrogram, magnitude, phase_sensitive_magnitude
from .schedule import training_progress
from .separation.separator import Separator


class SeparationSystem(pl.LightningModule):
    """Trains a :class:`~msslab.separation.Separator`: loss, optimiser, validation scores.

    How a mixture is separated (STFT, network, masks, Wiener filter) is the separator's; this
    module adds what training needs and delegates ``forward`` to it.

    Args:
        separator: what is trained; its network's parameters are this module's
            (state-dict keys ``separator.model.*``; checkpoints written before, with ``model.*``,
            load too).
        loss: a ``msslab.loss`` module (its ``domain`` says what it compares).
        optimizer, scheduler: partial constructors (Hydra ``_partial_: true``); the
            scheduler steps on ``val/loss`` when it is a ReduceLROnPlateau, after every
            batch when it says ``interval = "step"`` (``msslab.schedule.AnnealedLR``).
        val_metric: ``sdr`` or ``si_sdr``, logged per target each validation epoch.
        config: the resolved run config, stored in checkpoints so they rebuild themselves.
    """

    def __init__(self, separator: Separator, loss: nn.Module | None = None, optimizer=None, scheduler=None,
                 val_metric: str = "sdr", config: dict | None = None):
        super().__init__()
        if val_metric not in FAST_METRICS:
            raise ValueError(f"metric.validation: unknown metric {val_metric!r}; choose one of {sorted(FAST_METRICS)}")
        self.separator, self.loss = separator, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_metric = val_metric
        self.config = config
        if hasattr(loss, "bind_targets"):
            loss.bind_targets(self.targets)
        check_mask_kind(loss, self.model)  # e.g. a magnitude loss with complex masks: refused before any data is read
        self._val_scores: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._val_indices: list[torch.Tensor] = []  # the validation set index of each scored chunk
        self._val_order: list[int] | None = None
        self._register_load_state_dict_pre_hook(_renamed_keys)

    # The separator's parts, read-only here (training code and tests read them).
    @property
    def model(self) -> nn.Module:
        return self.separator.model

    @property
    def spectrogram(self) -> Spectrogram:
        return self.separator.spectrogram

    @property
    def targets(self) -> list[str]:
        return self.separator.targets

    @property
    def needs_targets(self) -> bool:
        return self.separator.needs_targets

    @property
    def complex_masks(self) -> bool:
        return self.separator.complex_masks

    def masks(self, *args, **kwargs) -> torch.Tensor:
        return self.separator.masks(*args, **kwargs)

    def forward(self, mixture: torch.Tensor, targets: torch.Tensor | None = None, autocast: bool = False) -> torch.Tensor:
        """Mixture ``(B, C, samples)`` -> estimates ``(B, S, C, samples)``: :meth:`Separator.forward`."""
        return self.separator(mixture, targets, autocast=autocast)

    def _step(self, batch, waveforms: bool = False):
        """``(loss, estimates)``; the estimate waveforms are made when the loss or ``waveforms`` needs them."""
        mixture, targets = batch
        mixture_spec = self.spectrogram(mixture)
        if self.complex_masks or self.loss.domain == "complex":
            # complex estimates: the masked mixture, its waveform and the true spectrograms
            estimate_specs = self.masks(mixture_spec) * mixture_spec.unsqueeze(1)
            estimates = self.spectrogram.inverse(estimate_specs, length=mixture.shape[-1])
            if self.loss.domain == "waveform":
                return self.loss(estimates, targets), estimates
            if self.loss.domain != "complex":  # check_mask_kind refused it at start-up
                raise ValueError(f"loss domain {self.loss.domain!r} cannot train complex masks")
            with torch.no_grad():
                target_specs = self.spectrogram(targets)
            return self.loss(estimate_specs, target_specs, estimates, targets), estimates
        mixture_magnitude = magnitude(mixture_spec)
        masks = self.masks(mixture_spec, mixture_magnitude=mixture_magnitude)
        estimates = None
        if waveforms or self.loss.domain == "waveform":
            estimates = self.spectrogram.inverse(masks * mixture_spec.unsqueeze(1), length=mixture.shape[-1])
        if self.loss.domain == "spectrogram":
            # masks are non-negative, so |mask * X| = mask * |X|: the loss needs no complex product
            # (that product, its abs and their gradients took most of a 44.1 kHz training step)
            with torch.no_grad():
                target_specs = self.spectrogram(targets)
                if getattr(self.loss, "phase_sensitive", False):
                    target_magnitudes = phase_sensitive_magnitude(target_specs, mixture_spec, mixture_magnitude)
                else:
                    target_magnitudes = magnitude(target_specs)
            return self.loss(masks * mixture_magnitude.unsqueeze(1), target_magnitudes), estimates
        return self.loss(estimates, targets), estimates

    def training_step(self, batch, batch_idx):
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch[0].shape[0])
        return loss

    def on_validation_epoch_start(self):
        # The dataset index of each chunk this process will score, in the order its loader
        # gives them. Under DDP, Lightning's DistributedSampler repeats chunks so that every
        # process gets as many; these indices let the median count each chunk once.
        loader = getattr(self.trainer, "val_dataloaders", None) if self._trainer is not None else None
        sampler = getattr(loader, "sampler", None)
        self._val_order = list(sampler) if sampler is not None and hasattr(sampler, "__iter__") else None
        self._val_indices = []

    def validation_step(self, batch, batch_idx):
        # One pass gives both the loss and the estimates scored (plain masking, as in training).
        loss, estimates = self._step(batch, waveforms=True)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=batch[0].shape[0], sync_dist=True)
        scores = FAST_METRICS[self.val_metric](estimates, batch[1])  # (B, S)
        for j, target in enumerate(self.targets):
            self._val_scores[target].append(scores[:, j].detach().cpu())
        seen = sum(len(i) for i in self._val_indices)
        order = self._val_order if self._val_order is not None else range(seen + len(scores))
        self._val_indices.append(torch.as_tensor(order[seen: seen + len(scores)], dtype=torch.long))

    def on_validation_epoch_end(self):
        if not self._val_scores:
            return
        # Under DDP each process scored its shard: the median is over every process's chunks,
        # each chunk once (the distributed sampler's padding repeats some on the last ranks).
        indices = self.all_gather(torch.cat(self._val_indices).to(self.device)).flatten()
        order = torch.argsort(indices, stable=True)
        repeated = torch.zeros_like(order, dtype=torch.bool)
        repeated[1:] = indices[order[1:]] == indices[order[:-1]]
        first = order[~repeated]  # the first score of each chunk
        medians = {t: self.all_gather(torch.cat(v).to(self.device)).flatten()[first].nanmedian()
                   for t, v in self._val_scores.items()}
        for target, value in medians.items():
            self.log(f"val/{self.val_metric}/{target}", value, sync_dist=True)  # equal on every process
        # The mean over targets is what checkpoints, early stopping and sweeps optimise.
        self.log(f"val/{self.val_metric}", torch.stack(list(medians.values())).mean(), prog_bar=True, sync_dist=True)
        self._val_scores.clear()
        self._val_indices, self._val_order = [], None

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "bind"):  # a schedule over the run (msslab.schedule.AnnealedLR)
            scheduler.bind(lambda: training_progress(self.trainer))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss",
                                                         "interval": getattr(scheduler, "interval", "epoch")}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["msslab_config"] = self.config


def _renamed_keys(state_dict, prefix, *args):
    """Load a state dict written before the network moved into the separator (``model.*``,
    ``spectrogram.*`` -> ``separator.model.*``, ``separator.spectrogram.*``), as checkpoints of msslab
    up to 0.1.0 hold; a Lightning resume loads through here too."""
    for old in [k for k in state_dict if k.startswith((prefix + "model.", prefix + "spectrogram."))]:
        state_dict[prefix + "separator." + old[len(prefix):]] = state_dict.pop(old)


def covers_mixture(sources: list[str], groups: dict[str, list[str]]) -> bool:
    """Whether the targets sum to the whole mixture (else models add a residual class)."""
    return sorted(s for members in groups.values() for s in members) == sorted(sources)


# The nodes of a config that build_system instantiates (load_checkpoint checks them first).
INSTANTIATED = ("stft", "model", "loss", "optimizer", "scheduler")


def build_system(cfg, targets: list[str], nb_channels: int, residual: bool) -> SeparationSystem:
    """Build the LightningModule from a composed config (``stft``, ``model``, ``loss``, ...)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from .results import run_identity
    from .separation.inference import SeparationSettings

    # The training run's identity travels in the checkpoint (evaluations record it, not their own).
    run = OmegaConf.to_container(cfg.run) if cfg.get("run") else run_identity(cfg)
    spectrogram = instantiate(cfg.stft)
    model = instantiate(cfg.model, nb_bins=spectrogram.nb_bins, max_bin=spectrogram.max_bin, nb_channels=nb_channels,
                        nb_targets=len(targets), residual=residual, sample_rate=spectrogram.sample_rate)
    # a config without the block is an old checkpoint's: it separates as it did then
    settings = SeparationSettings.resolve(None, OmegaConf.to_container(cfg.separation) if cfg.get("separation") else {})
    separator = Separator(model, spectrogram, targets, residual, **settings.wiener)
    return SeparationSystem(
        separator, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, val_metric=cfg.metric.validation,
        config=OmegaConf.to_container(cfg, resolve=True) | {"targets": targets, "nb_channels": nb_channels, "residual": residual,
                                                            "run": run})


def load_checkpoint(path, map_location="cpu") -> SeparationSystem:
    """Rebuild a trained system from a checkpoint written by ``msslab-train``.

    Only tensors and plain data are unpickled (``weights_only=True``): a checkpoint that
    needs more (pickled callables, custom classes) raises :class:`CheckpointError`
    without running any of it. The stored config is checked before anything is built
    from it: a ``_target_`` outside msslab's own classes and torch's optimizers and
    schedulers (``msslab.trust``), or an interpolation, raises :class:`CheckpointError`
    naming the key, and nothing the file names is called.
    """
    from pathlib import Path

    from omegaconf import OmegaConf

    from .errors import CheckpointError, UnsafeConfigError
    from .results import stored_identity
    from .trust import check_config, checkpoint_targets

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt: checkpoint {path} does not exist")
    try:
        # weights_only: tensors and plain data only; a pickled object (code) is refused, never run.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().split("\n")[0]
        if "global" in reason.lower():  # a class or function to import and call: code, not data
            raise CheckpointError(f"ckpt: {path} refused: it holds pickled objects, which would run code when loaded "
                                  f"(msslab checkpoints hold only tensors and plain data): {reason}") from None
        raise CheckpointError(f"ckpt: checkpoint {path} could not be read ({reason})") from None
    except Exception as exc:
        raise CheckpointError(f"ckpt: checkpoint {path} could not be read ({type(exc).__name__}: {exc})") from exc
    config = checkpoint.get("msslab_config") if isinstance(checkpoint, dict) else None
    if not config or "state_dict" not in checkpoint:
        raise CheckpointError(f"ckpt: {path} was not written by msslab-train (it holds no msslab_config / state_dict)")
    if not isinstance(config, dict):
        raise CheckpointError(f"ckpt: {path}: its msslab_config is a {type(config).__name__}, not a mapping")
    missing = [key for key in (*INSTANTIATED[:-1], "targets", "nb_channels", "residual") if key not in config]
    if missing:
        raise CheckpointError(f"ckpt: {path}: its msslab_config lacks {', '.join(missing)}")
    try:  # the nodes built here against the allow-list; the rest (read, never built): plain data, no interpolation
        check_config({key: config[key] for key in INSTANTIATED if key in config}, checkpoint_targets())
        check_config({key: value for key, value in config.items() if key not in INSTANTIATED}, None)
    except UnsafeConfigError as exc:
        raise CheckpointError(f"ckpt: {path} refused, nothing in it was run: msslab_config.{exc}") from None
    # A checkpoint from before identities were stored: the run directory (run/checkpoints/x.ckpt) knows it.
    config["run"] = stored_identity(config, path.parent.parent)
    cfg = OmegaConf.create(config)
    system = build_system(cfg, config["targets"], config["nb_channels"], config["residual"])
    system.load_state_dict(checkpoint["state_dict"])
    # load_state_dict copies into the CPU-built module: move it to where it was asked for.
    return system.to(map_location).eval()
