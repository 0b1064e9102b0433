"""Inference on whole tracks: overlapping chunks, batched on the device, cross-faded, streamed out.

One module for the test-set evaluation (``msslab-train``, ``msslab-eval``) and for
``msslab-separate``. A track is cut into chunks of ``chunk_seconds`` overlapping by
``overlap_seconds``; ``batch_size`` chunks go through the model per forward pass
(optionally under bfloat16 autocast), each is refined by the multichannel Wiener
filter when asked, and neighbours are cross-faded. Only the chunks of one batch and
the not yet finished overlap are held on the device; finished samples are handed
back as they are ready, so memory is flat in the track's length on either device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

import torch
import yaml

from .. import CONFIG_DIR
from ..errors import MsslabError

# (mixture (C, n), targets (S, C, n) or None) for samples [start, stop) at the model's rate.
Reader = Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]


# The one place the separation defaults are written is conf/train.yaml's `separation:` block; the
# dataclass below reads them from there (eval.yaml and separate.yaml only null its keys: "the checkpoint's").
_DEFAULTS = yaml.safe_load((CONFIG_DIR / "train.yaml").read_text(encoding="utf-8"))["separation"]
# What a checkpoint written before a key existed (or before the `separation:` block) did; it keeps
# doing it when the defaults move: plain masks, and powers in the Wiener gains.
_BEFORE_THE_KEY = {"wiener_iterations": 0, "wiener_exponent": 2.0}


@dataclasses.dataclass(frozen=True)
class SeparationSettings:
    """The ``separation:`` config block. The defaults are read from ``conf/train.yaml`` (also used for
    checkpoints written before a key existed).

    Args:
        chunk_seconds: length of the chunks the model sees, in seconds.
        overlap_seconds: cross-fade between neighbouring chunks, in seconds (at most half a chunk).
        batch_size: chunks per forward pass (more: faster on a GPU, more memory).
        autocast: run the network in bfloat16 autocast (STFT and Wiener filter stay float32).
        wiener_iterations: multichannel Wiener filter EM iterations (0: plain masking).
        wiener_float64: run the Wiener filter in float64 (slower; float32 is within 1e-3 of it).
        wiener_exponent: the exponent of the source spectrograms in the Wiener gains (2: power
            spectrograms, norbert's filter; lower: softer gains, fewer artifacts, more interference).
    """

    chunk_seconds: float = _DEFAULTS["chunk_seconds"]
    overlap_seconds: float = _DEFAULTS["overlap_seconds"]
    batch_size: int = _DEFAULTS["batch_size"]
    autocast: bool = _DEFAULTS["autocast"]
    wiener_iterations: int = _DEFAULTS["wiener_iterations"]
    wiener_float64: bool = _DEFAULTS["wiener_float64"]
    wiener_exponent: float = _DEFAULTS["wiener_exponent"]

    def __post_init__(self):
        checks = {"chunk_seconds": self.chunk_seconds > 0, "overlap_seconds": self.overlap_seconds >= 0,
                  "batch_size": int(self.batch_size) == self.batch_size >= 1,
                  "wiener_iterations": int(self.wiener_iterations) == self.wiener_iterations >= 0,
                  "wiener_exponent": isinstance(self.wiener_exponent, (int, float)) and 0 < self.wiener_exponent <= 4}
        for key, ok in checks.items():
            if not ok:
                raise MsslabError(f"separation.{key}: invalid value {getattr(self, key)!r}")

    @classmethod
    def resolve(cls, command: Mapping | None, checkpoint: Mapping | None = None) -> SeparationSettings:
        """Settings from the command's ``separation`` block; its null keys come from ``checkpoint``'s
        block (the one the model was trained with; ``{}`` for a checkpoint without one), then from the
        defaults. A key the checkpoint's block lacks (written before the key existed) takes the value
        it had then (plain masks, Wiener powers), not today's default. Unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        stored = {} if checkpoint is None else _BEFORE_THE_KEY | {k: v for k, v in checkpoint.items() if v is not None}
        for source in (stored, command or {}):
            unknown = sorted(set(source) - known)
            if unknown and source is command:
                raise MsslabError(f"separation.{unknown[0]}: unknown key; the keys are {sorted(known)}")
            values.update({k: v for k, v in source.items() if k in known and v is not None})
        return cls(**values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def wiener(self) -> dict:
        """The Wiener filter settings, as :class:`~msslab.separation.Separator` takes them."""
        return {"wiener_iterations": self.wiener_iterations, "wiener_exponent": self.wiener_exponent,
                "wiener_float64": self.wiener_float64}


def as_separator(separator):
    """A :class:`~msslab.separation.Separator`; a ``SeparationSystem`` gives the one it trains."""
    return getattr(separator, "separator", separator)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a device."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise MsslabError(f"device={name}: no CUDA device is available here; use device=cpu or device=auto")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise MsslabError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) are available")
        return torch.device(name)
    raise MsslabError(f"device: unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def chunk_starts(length: int, chunk: int, overlap: int) -> list[int]:
    """Start samples of equal chunks covering ``length`` samples (the last one aligned to the end)."""
    if length <= chunk:
        return [0]
    return list(range(0, length - chunk, chunk - overlap)) + [length - chunk]


@torch.no_grad()
def separate_stream(separator, read: Reader, length: int, settings: SeparationSettings | None = None
                    ) -> Iterator[torch.Tensor]:
    """Separate a ``length``-sample track, read on demand, into consecutive blocks ``(S, C, n)``.

    ``separator``: a :class:`~msslab.separation.Separator` (or a ``SeparationSystem``, for its own).
    ``settings``: chunking, batching, autocast and the Wiener filter (which replaces the
    separator's own); None: the default chunking and the separator's own Wiener filter.
    ``read(start, stop)`` returns the mixture (and, for models that need them, the true
    sources) of samples ``[start, stop)`` at the separator's rate; the blocks are on the
    separator's device and together cover ``[0, length)`` in order.
    """
    separator = as_separator(separator)
    if settings is None:
        settings = SeparationSettings(**{"wiener_iterations": separator.wiener_iterations,
                                         "wiener_exponent": separator.wiener_exponent,
                                         "wiener_float64": separator.wiener_float64})
    separator = separator.replace(**settings.wiener)
    device = separator.device
    rate = separator.spectrogram.sample_rate
    shortest = separator.spectrogram.n_fft  # the STFT's reflect padding needs this much signal
    chunk = max(int(settings.chunk_seconds * rate), shortest)
    overlap = min(int(settings.overlap_seconds * rate), chunk // 2)
    forward = dict(autocast=settings.autocast)
    if length <= chunk:  # one chunk of the track's own length, padded up to the STFT's minimum
        mixture, targets = read(0, length)
        pad = (0, max(0, shortest - length))
        mixture = torch.nn.functional.pad(mixture.to(device), pad)[None]
        targets = None if targets is None else torch.nn.functional.pad(targets.to(device), pad)[None]
        yield separator(mixture, targets, **forward)[0, ..., :length]
        return
    starts = chunk_starts(length, chunk, overlap)
    ramp = torch.linspace(0, 1, overlap + 2, device=device)[1:-1]
    acc = weight = None  # the unfinished samples, from acc_start on
    acc_start = 0
    for first in range(0, len(starts), settings.batch_size):
        batch = starts[first : first + settings.batch_size]
        pieces = [read(start, start + chunk) for start in batch]
        mixtures = torch.stack([m for m, _ in pieces]).to(device)
        targets = None if pieces[0][1] is None else torch.stack([t for _, t in pieces]).to(device)
        estimates = separator(mixtures, targets, **forward)  # (batch, S, C, chunk)
        if acc is None:
            acc = estimates.new_zeros(estimates.shape[1:-1] + (0,))
            weight = estimates.new_zeros(0)
        for start, estimate in zip(batch, estimates):
            grow = start + chunk - (acc_start + acc.shape[-1])
            acc = torch.cat([acc, acc.new_zeros(acc.shape[:-1] + (grow,))], -1)
            weight = torch.cat([weight, weight.new_zeros(grow)])
            fade = torch.ones(chunk, device=device)
            if overlap and start > 0:
                fade[:overlap] = ramp
            if overlap and start + chunk < length:
                fade[-overlap:] = ramp.flip(0)
            acc[..., start - acc_start :] += estimate * fade
            weight[start - acc_start :] += fade
        # Samples before the next chunk's start get no more contributions.
        finished = starts[first + len(batch)] if first + len(batch) < len(starts) else length
        done = finished - acc_start
        yield acc[..., :done] / weight[:done]
        acc, weight, acc_start = acc[..., done:], weight[done:], finished


def separate(separator, mixture: torch.Tensor, settings: SeparationSettings | None = None,
             targets: torch.Tensor | None = None, out_device: str | torch.device = "cpu") -> torch.Tensor:
    """Separate a whole mixture ``(C, samples)`` at the separator's rate -> estimates ``(S, C, samples)``
    on ``out_device`` (``settings``: as :func:`separate_stream`'s). ``targets`` ``(S, C, samples)`` is
    read chunk by chunk by models that need it."""

    def read(start: int, stop: int):
        return mixture[:, start:stop], None if targets is None else targets[..., start:stop]

    out, position = None, 0
    for block in separate_stream(separator, read, mixture.shape[-1], settings):
        if out is None:
            out = torch.empty(block.shape[:-1] + mixture.shape[-1:], dtype=block.dtype, device=out_device)
        out[..., position : position + block.shape[-1]] = block
        position += block.shape[-1]
    return out
