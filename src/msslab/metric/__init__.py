"""Evaluation (config group ``metric``): fast SDR for validation, museval BSSEval v4 for test."""

from .sdr import FAST_METRICS, sdr, si_sdr

__all__ = ["FAST_METRICS", "sdr", "si_sdr"]
