"""Data (config group ``data``): track sets and the LightningDataModule built from them."""

from .tracks import DataError, TrackSet

__all__ = ["MSSDataModule", "TrackSet", "DataError", "target_groups"]


def __getattr__(name: str):
    # Lazy: the processes that render synthetic tracks import this package, and need neither
    # torch nor Lightning (seconds of start-up each).
    if name in ("MSSDataModule", "target_groups"):
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
