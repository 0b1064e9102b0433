"""Streaming separation with causal models: audio blocks of any size in, separated blocks out.

A :class:`Streamer` turns a causal :class:`~msslab.separation.Separator` (``model=lstm``,
``model=gru``, ``model=bsrnn model.bidirectional=false``: any unidirectional model with a
frame-by-frame ``step``) into a block-by-block separator for live use. Its output is the
offline separation of the same separator (its forward on the whole signal in one piece)
delayed by ``latency_samples``, for any block size:

- framing: the offline STFT is centred with reflect padding. The stream builds the same
  padding: at the start once it holds ``n_fft // 2 + 1`` samples, at the end in ``flush``
  (inputs shorter than ``n_fft`` are zero-extended to ``n_fft`` first, as offline separation,
  ``inference.separate``, does);
- the RNN hidden state is carried from frame to frame (``Separator.step``: the model's ``step``
  on magnitudes for real masks, on the complex frames for complex masks); every other
  layer works frame by frame with statistics fixed at training time, so nothing looks at
  the future or at whole-signal statistics;
- overlap-add: a separated sample is final once the last frame covering it is done, which
  is at most ``n_fft - 1`` samples after it arrived, whatever the hop and block size.

The stream is held back by exactly that worst case, ``latency_samples = n_fft - 1`` (the
model adds none: it is causal frame by frame), so every call returns as many samples as it
was given. ``flush`` returns the last ``latency_samples`` samples: the stream of outputs is
``latency_samples`` zeros followed by the offline separation.

Reading and writing files through a Streamer is :mod:`msslab.separation.stream_files`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MsslabError
from . import load_separator
from .inference import as_separator
from .separator import Separator


class StreamingError(MsslabError):
    """A checkpoint or setting that cannot stream (bidirectional model, whole-file Wiener filter, ...)."""


class Streamer:
    """Block-by-block separation with a causal separator; all stream state lives here.

    Args:
        separator: a :class:`~msslab.separation.Separator` (a ``SeparationSystem`` gives its own), or the
            path of a checkpoint written by ``msslab-train`` (loaded on ``device``).
        device: where the separator runs.
        wiener_context_frames: with the separator's ``wiener_iterations > 0``, the causal Wiener
            filter: each frame is filtered over itself and this many frames in all (the past ones),
            not over the whole file as offline; None refuses the filter (it is not causal).

    ``process(block)`` takes ``(channels, samples)`` float audio at ``sample_rate`` (numpy or
    torch, any number of samples, the model's channel count) and returns
    ``{target: (channels, samples)}`` of the same type and length, delayed by
    ``latency_samples``. ``flush()`` ends the stream, returns the remaining
    ``latency_samples`` samples per target, and readies the object for a new stream.
    """

    def __init__(self, separator: Separator | str | os.PathLike, device: str | torch.device = "cpu",
                 wiener_context_frames: int | None = None):
        separator = (load_separator(separator, map_location=device) if isinstance(separator, (str, os.PathLike))
                     else as_separator(separator))
        model = separator.model
        if separator.needs_targets:
            raise StreamingError("streaming: the oracle model needs the true sources; it cannot separate a stream")
        if not hasattr(model, "step"):
            raise StreamingError(f"streaming: {type(model).__name__} has no frame-by-frame step to stream with")
        if not model.causal:
            raise StreamingError(
                "streaming: this checkpoint's RNN is bidirectional: each frame's masks depend on the whole "
                "signal, future frames included, which a stream has not received yet. Separate it offline "
                "(streaming=false) or stream a causal model (model=lstm, model=gru, model=bsrnn "
                "model.bidirectional=false).")
        if separator.wiener_iterations and not wiener_context_frames:
            raise StreamingError(
                f"streaming: wiener_iterations={separator.wiener_iterations} is not causal (the Wiener filter "
                "estimates each source's spatial covariance over the whole file); use wiener_iterations=0, or "
                "the causal variant over a short past context (wiener_context_ms)")
        self.wiener_context_frames = int(wiener_context_frames or 0) if separator.wiener_iterations else 0
        self.separator = separator.to(device).eval()
        self.spectrogram = separator.spectrogram
        self.targets = list(separator.targets)
        self.sample_rate = separator.sample_rate
        self.nb_channels = separator.nb_channels
        self.n_fft, self.hop = self.spectrogram.n_fft, self.spectrogram.hop_length
        self._envelopes = {}
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency in samples: ``n_fft - 1`` (the STFT window; the causal model adds none)."""
        return self.n_fft - 1

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency in milliseconds at ``sample_rate``."""
        return 1000.0 * self.latency_samples / self.sample_rate

    def reset(self) -> None:
        """Forget the current stream (framing, RNN and overlap-add state)."""
        device = self.separator.device
        nb_targets, channels = len(self.targets), self.nb_channels
        self._received = 0  # input samples given to process()
        self._numpy = True  # return numpy arrays (the last block's type)
        self._head = torch.zeros(channels, 0, device=device)  # the first samples, until the start padding can be built
        self._padded = None  # the centre-padded input, from padded sample _padded_start on
        self._padded_start = 0
        self._next_frame = 0
        self._rnn_state = None
        self._wiener_past = None  # (estimates, mixture) spectrograms of the causal Wiener filter's past frames
        # Overlap-add sums (estimates and squared window) over padded samples
        # [_next_frame * hop, _next_frame * hop + n_fft - hop): earlier frames touched them, later ones will.
        self._carry = torch.zeros(nb_targets, channels, self.n_fft - self.hop, device=device)
        self._carry_envelope = torch.zeros(self.n_fft - self.hop, device=device)
        self._to_trim = self.n_fft // 2  # the centre padding's samples, dropped from the output as istft does
        # Finished output not yet returned; it starts with the latency as silence.
        self._ready = torch.zeros(nb_targets, channels, self.latency_samples, device=device)

    @torch.inference_mode()
    def process(self, block) -> dict:
        """``(channels, samples)`` -> ``{target: (channels, samples)}``, the separation delayed by ``latency_samples``."""
        x = self._as_tensor(block)
        self._received += x.shape[-1]
        self._feed(x)
        self._numpy = not isinstance(block, torch.Tensor)
        return self._emit(x.shape[-1], numpy=self._numpy)

    @torch.inference_mode()
    def flush(self) -> dict:
        """End the stream -> ``{target: (channels, latency_samples)}``, the separation's last samples.

        Of the type of the last block (numpy when none was given); the streamer is then ready for a new stream.
        """
        length = self._received
        if length < self.n_fft:  # shorter than one window: zero-extended to n_fft, as offline separation does
            # (frames already done only saw received samples, which the extension leaves alone)
            self._feed(torch.zeros(self.nb_channels, self.n_fft - length, device=self.separator.device))
        # The offline STFT's reflect padding at the end: the samples before the last one, mirrored.
        half = self.n_fft // 2
        self._padded = torch.cat([self._padded, self._padded[:, -half - 1: -1].flip(-1)], dim=-1)
        self._compute_frames()
        # No frame follows: the overlap-add sums still open are final.
        self._append(self._carry / self._carry_envelope)
        # process() returned `length` samples of the stream (the latency's silence, then the separation).
        out = self._emit(self.latency_samples, numpy=self._numpy)
        self.reset()
        return out

    # ---------------------------------------------------------------- internals

    def _as_tensor(self, block) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(block, dtype=np.float32) if isinstance(block, np.ndarray) else block)
        if x.ndim != 2 or x.shape[0] != self.nb_channels:
            raise ValueError(f"Streamer.process: a block is (channels={self.nb_channels}, samples), got shape "
                             f"{tuple(x.shape)}")
        return x.to(self.separator.device, torch.float32)

    def _feed(self, x: torch.Tensor) -> None:
        if self._padded is None:
            self._head = torch.cat([self._head, x], dim=-1)
            half = self.n_fft // 2
            if self._head.shape[-1] <= half:
                return  # the start's reflect padding needs samples 1 .. n_fft // 2
            self._padded = torch.cat([self._head[:, 1: half + 1].flip(-1), self._head], dim=-1)
            self._head = None
        else:
            self._padded = torch.cat([self._padded, x], dim=-1)
        self._compute_frames()

    def _compute_frames(self) -> None:
        """Separate every complete frame not done yet and overlap-add it."""
        n_fft, hop = self.n_fft, self.hop
        start = self._next_frame * hop - self._padded_start
        available = self._padded.shape[-1] - start
        if available < n_fft:
            return
        count = (available - n_fft) // hop + 1
        span = (count - 1) * hop + n_fft
        spec = self.spectrogram.frames(self._padded[:, start: start + span])[None]  # (1, C, F, count)
        # oneDNN's RNN costs about 10 ms of set-up per call on a CPU, ten times ATen's kernel for a few frames.
        onednn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            estimates, self._rnn_state = self.separator.step(spec, self._rnn_state)
        finally:
            torch.backends.mkldnn.enabled = onednn
        if self.wiener_context_frames:
            estimates = self._causal_wiener(estimates, spec)
        frames = self.spectrogram.inverse_frames(estimates[0])  # (S, C, n_fft, count)
        sums = self._overlap_add(frames, span)
        envelope = self._envelope(count)
        sums[..., : n_fft - hop] += self._carry
        envelope[: n_fft - hop] += self._carry_envelope
        done = count * hop
        self._append(sums[..., :done] / envelope[:done])
        self._carry, self._carry_envelope = sums[..., done:], envelope[done:]
        self._next_frame += count
        # Keep what the next frames need, and at least n_fft samples for the end's reflect padding.
        keep_from = min(self._next_frame * hop, self._padded_start + self._padded.shape[-1] - n_fft)
        self._padded = self._padded[:, keep_from - self._padded_start:]
        self._padded_start = keep_from

    def _causal_wiener(self, estimates: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """The separator's Wiener filter, each frame over itself and the frames before it (context in all),
        in float64 whatever the separator's setting: a few-frame context needs float64's small regulariser.

        ``(1, S, C, F, count)`` masked estimates and ``(1, C, F, count)`` mixture -> filtered estimates.
        """
        count, context = estimates.shape[-1], self.wiener_context_frames
        if self._wiener_past is not None:
            estimates = torch.cat([self._wiener_past[0], estimates], dim=-1)
            mixture = torch.cat([self._wiener_past[1], mixture], dim=-1)
        total = estimates.shape[-1]
        filtered = [self.separator.wiener(estimates[..., max(0, t + 1 - context): t + 1],
                                          mixture[..., max(0, t + 1 - context): t + 1], float64=True)[..., -1:]
                    for t in range(total - count, total)]
        if context > 1:
            self._wiener_past = (estimates[..., -(context - 1):], mixture[..., -(context - 1):])
        return torch.cat(filtered, dim=-1)

    def _envelope(self, count: int) -> torch.Tensor:
        """Overlap-add of the squared window over ``count`` frames (a fresh tensor: the caller adds to it)."""
        if count not in self._envelopes:
            square = self.spectrogram.window.square()[:, None].expand(self.n_fft, count)
            self._envelopes = {count: self._overlap_add(square, (count - 1) * self.hop + self.n_fft)}  # one size cached
        return self._envelopes[count].clone()

    def _overlap_add(self, frames: torch.Tensor, span: int) -> torch.Tensor:
        """``(..., n_fft, frames)`` -> ``(..., span)``: the frames summed at their hop positions."""
        lead = frames.shape[:-2]
        out = F.fold(frames.reshape(-1, self.n_fft, frames.shape[-1]), (1, span), (1, self.n_fft),
                     stride=(1, self.hop))
        return out.reshape(*lead, span)

    def _append(self, finished: torch.Tensor) -> None:
        trim = min(self._to_trim, finished.shape[-1])
        self._to_trim -= trim
        self._ready = torch.cat([self._ready, finished[..., trim:]], dim=-1)

    def _emit(self, count: int, numpy: bool) -> dict:
        if self._ready.shape[-1] < count:  # the latency covers every block size; this is a bug if reached
            raise RuntimeError(f"Streamer: {count} samples due, {self._ready.shape[-1]} ready")
        out, self._ready = self._ready[..., :count], self._ready[..., count:]
        if numpy:
            out = out.cpu().numpy()
        return dict(zip(self.targets, out))
