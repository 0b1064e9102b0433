"""The Separator: a trained network as a plain ``nn.Module``, mixture waveforms in, source waveforms out.

It owns everything about *how* a mixture is separated: the STFT (:class:`~msslab.model.Spectrogram`),
the network, its masks (real masks on the magnitude or complex masks on the complex spectrogram, as the
model's ``mask_kind`` says), the multichannel Wiener filter settings and the residual flag. It needs no
Lightning: :class:`msslab.system.SeparationSystem` wraps one for training; inference
(:mod:`msslab.separation.inference`), ``msslab-separate`` and the :class:`~msslab.separation.streaming.Streamer`
take one. ::

    from msslab.separation import load_separator
    separator = load_separator("run/checkpoints/best.ckpt")      # or build_system(...).separator
    estimates = separator(mixture)                               # (B, C, n) -> (B, S, C, n), same rate
    softer = separator.replace(wiener_iterations=1, wiener_exponent=1.25)  # shares the weights
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.spectrogram import Spectrogram, magnitude
from ..model.wiener import wiener
from .inference import SeparationSettings

_DEFAULTS = SeparationSettings()  # the one place the Wiener defaults come from (conf/train.yaml's separation)


class Separator(nn.Module):
    """STFT -> network -> masks -> (Wiener filter) -> inverse STFT.

    Args:
        model: the network; ``model.mask_kind`` is ``magnitude`` (it maps mixture magnitudes
            ``(B, C, F, T)`` to real masks ``(B, S, C, F, T)``) or ``complex`` (complex spectrogram in,
            complex masks out); a model with ``needs_targets`` (the oracle) gets the true sources too.
        spectrogram: the STFT front end (its ``sample_rate`` is the rate the separator works at, Hz).
        targets: the target names, in the order of the model's masks.
        residual: the targets do not cover the mixture (the Wiener filter adds an "everything else" source).
        wiener_iterations: multichannel Wiener filter EM iterations (0: plain masking with the mixture phase).
        wiener_exponent: the spectrogram exponent of the Wiener gains (2: power spectrograms).
        wiener_float64: run the Wiener filter in float64.
    """

    def __init__(self, model: nn.Module, spectrogram: Spectrogram, targets: list[str], residual: bool = False,
                 wiener_iterations: int = _DEFAULTS.wiener_iterations,
                 wiener_exponent: float = _DEFAULTS.wiener_exponent,
                 wiener_float64: bool = _DEFAULTS.wiener_float64):
        super().__init__()
        self.model, self.spectrogram, self.targets, self.residual = model, spectrogram, list(targets), residual
        self.wiener_iterations, self.wiener_exponent = int(wiener_iterations), float(wiener_exponent)
        self.wiener_float64 = bool(wiener_float64)

    def replace(self, **settings) -> Separator:
        """A separator with other Wiener settings (``wiener_iterations``, ``wiener_exponent``,
        ``wiener_float64``), sharing this one's network and STFT (nothing is copied)."""
        current = {"wiener_iterations": self.wiener_iterations, "wiener_exponent": self.wiener_exponent,
                   "wiener_float64": self.wiener_float64}
        unknown = sorted(set(settings) - set(current))
        if unknown:
            raise TypeError(f"Separator.replace: unknown setting {unknown[0]!r}; the settings are {sorted(current)}")
        new = Separator(self.model, self.spectrogram, self.targets, self.residual, **(current | settings))
        return new.train(self.training)

    @property
    def sample_rate(self) -> int:
        """The rate (Hz) the separator takes and gives audio at."""
        return self.spectrogram.sample_rate

    @property
    def nb_channels(self) -> int:
        """Audio channels the network was built for."""
        return getattr(self.model, "nb_channels", None)

    @property
    def device(self) -> torch.device:
        """Where the STFT (and the network) live."""
        return self.spectrogram.window.device

    @property
    def needs_targets(self) -> bool:
        """The model (an oracle) needs the true sources: it can be evaluated, not used to separate."""
        return getattr(self.model, "needs_targets", False)

    @property
    def complex_masks(self) -> bool:
        """The model estimates complex masks from the complex spectrogram (else real masks from magnitudes)."""
        return getattr(self.model, "mask_kind", "magnitude") == "complex"

    @property
    def causal(self) -> bool:
        """Each frame's masks depend on that frame and earlier ones only, computed frame by frame
        (``model.step``): the separator can stream (:class:`~msslab.separation.streaming.Streamer`)."""
        return hasattr(self.model, "step") and bool(getattr(self.model, "causal", False)) and not self.needs_targets

    def masks(self, mixture_spec: torch.Tensor, target_specs: torch.Tensor | None = None,
              mixture_magnitude: torch.Tensor | None = None) -> torch.Tensor:
        """Masks from the mixture spectrogram ``(B, C, F, T)`` (``mixture_magnitude``: its magnitude, when the
        caller has it): real ``(B, S, C, F, T)`` for a magnitude-mask model, complex for a complex-mask one."""
        if self.needs_targets:
            if target_specs is None:
                raise ValueError("the oracle model needs the true sources: it can only be evaluated, not used to separate")
            return self.model(mixture_spec, target_specs)
        return self.model(self._model_input(mixture_spec, mixture_magnitude))

    def _model_input(self, mixture_spec: torch.Tensor, mixture_magnitude: torch.Tensor | None = None) -> torch.Tensor:
        """What the network reads: the complex spectrogram for complex masks, else its magnitude."""
        if self.complex_masks:
            return mixture_spec
        return magnitude(mixture_spec) if mixture_magnitude is None else mixture_magnitude

    def step(self, mixture_spec: torch.Tensor, state=None):
        """Masked estimates of some frames of a stream: ``(B, C, F, T)`` complex frames and the state the
        previous call returned -> ``((B, S, C, F, T)`` complex estimates, new state). Frame by frame equal to
        one call on the whole sequence (causal models only; no Wiener filter)."""
        masks, state = self.model.step(self._model_input(mixture_spec), state)
        return masks * mixture_spec.unsqueeze(1), state

    def wiener(self, estimate_specs: torch.Tensor, mixture_spec: torch.Tensor, float64: bool | None = None):
        """The multichannel Wiener filter with this separator's settings (``float64`` None: its own)
        over masked estimates ``(B, S, C, F, T)`` of ``mixture_spec`` ``(B, C, F, T)``."""
        return wiener(estimate_specs.abs(), mixture_spec, self.wiener_iterations, residual=self.residual,
                      float64=self.wiener_float64 if float64 is None else float64, exponent=self.wiener_exponent)

    def forward(self, mixture: torch.Tensor, targets: torch.Tensor | None = None, autocast: bool = False) -> torch.Tensor:
        """Mixture ``(B, C, samples)`` at :attr:`sample_rate` -> estimates ``(B, S, C, samples)``.

        ``targets`` ``(B, S, C, samples)``: the true sources, for a model that needs them (the oracle).
        ``autocast``: the network in bfloat16 (STFT and Wiener filter stay float32).
        """
        mixture_spec = self.spectrogram(mixture)
        target_specs = self.spectrogram(targets) if targets is not None else None
        with torch.autocast(mixture.device.type, dtype=torch.bfloat16, enabled=autocast):
            masks = self.masks(mixture_spec, target_specs)
        # back from bfloat16; a complex mask keeps its imaginary part
        masks = masks.to(mixture_spec.dtype if masks.is_complex() else mixture.dtype)
        estimate_specs = masks * mixture_spec.unsqueeze(1)
        if self.wiener_iterations > 0 and getattr(self.model, "post_filter", True):
            estimate_specs = self.wiener(estimate_specs, mixture_spec)
        return self.spectrogram.inverse(estimate_specs, length=mixture.shape[-1])
