"""Separator networks (config group ``model``) and the spectrogram front end they share."""

from .bands import MaskBands
from .bsrnn import BandSplitRNN
from .reference import MixtureBaseline, OracleIRM
from .rnn import RNNSeparator
from .spectrogram import Spectrogram

__all__ = ["RNNSeparator", "BandSplitRNN", "OracleIRM", "MixtureBaseline", "MaskBands", "Spectrogram"]
