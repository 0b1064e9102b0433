"""Data (config group ``data``): track sets and the LightningDataModule built from them."""

from .datamodule import MSSDataModule, target_groups
from .tracks import DataError, TrackSet

__all__ = ["MSSDataModule", "TrackSet", "DataError", "target_groups"]
