"""Separator networks (config group ``model``) and the spectrogram front end they share."""

from .bands import MaskBands
from .reference import MixtureBaseline, OracleIRM
from .rnn import RNNSeparator
from .spectrogram import Spectrogram

__all__ = ["RNNSeparator", "OracleIRM", "MixtureBaseline", "MaskBands", "Spectrogram"]
