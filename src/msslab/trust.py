"""What a config read from a file (a checkpoint's, a run directory's) may make Hydra call.

``hydra.utils.instantiate`` calls whatever a ``_target_`` names: in a checkpoint that is
the file's author, not the user. ``pathlib.Path.write_text`` followed by
``torch.load(..., weights_only=False)`` runs any pickle, ``builtins.open`` with
``mode: w`` truncates any file. So a stored config is checked, whole, before anything in
it is instantiated: every ``_target_`` must be one of the exact names below (no prefix
match: ``msslab.system.torch.load`` would resolve to ``torch.load``), Hydra's other
``_keys_`` must hold plain values, and no value may be an interpolation (stored configs
are resolved, and a resolver is code too).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch

from .errors import UnsafeConfigError

# Hydra's reserved keys besides _target_ and the values they take.
_FLAGS = {"_partial_": (True, False), "_recursive_": (True, False), "_convert_": ("none", "partial", "object", "all")}


def _names(obj, public: str) -> set[str]:
    """The public name of a class and the one of its defining module (both are how a config may spell it)."""
    return {public, f"{obj.__module__}.{obj.__qualname__}"}


@functools.cache
def checkpoint_targets() -> frozenset[str]:
    """What a checkpoint may rebuild: msslab's STFT, models, losses and schedule, and torch's
    optimizers and learning-rate schedulers (classes only, by their exact names)."""
    from . import loss, model, schedule

    names: set[str] = set()
    for module, public in ((model, "msslab.model"), (loss, "msslab.loss")):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj.__module__.startswith("msslab."):
                names |= _names(obj, f"{public}.{name}")
    names |= _names(schedule.AnnealedLR, "msslab.schedule.AnnealedLR")
    for name in torch.optim.__all__:
        obj = getattr(torch.optim, name)
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
            names |= _names(obj, f"torch.optim.{name}")
    schedulers = torch.optim.lr_scheduler
    for name in schedulers.__all__:
        obj = getattr(schedulers, name)
        if inspect.isclass(obj) and issubclass(obj, (schedulers.LRScheduler, schedulers.ReduceLROnPlateau)):
            names |= _names(obj, f"torch.optim.lr_scheduler.{name}")
    return frozenset(names)


# Targets that README recipes put on the command line (kept by a run directory's overrides).
_RECIPE_TARGETS = ("lightning.pytorch.callbacks.WeightAveraging", "torch.optim.swa_utils.get_ema_multi_avg_fn",
                   "datetime.timedelta")


@functools.cache
def run_targets(conf_dir: str) -> frozenset[str]:
    """What a run directory's stored overrides may name: a checkpoint's targets, every target of
    the shipped config groups under ``conf_dir``, and those of the README's recipes."""
    import yaml

    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                found.add(node["_target_"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in Path(conf_dir).rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return checkpoint_targets() | found | set(_RECIPE_TARGETS)


def check_config(node, allowed: frozenset[str] | None, prefix: str = "", interpolations: bool = False) -> None:
    """Raise :class:`UnsafeConfigError` naming the first key whose value could make Hydra call
    something outside ``allowed`` (None: a part never instantiated, whose targets are not
    checked); ``node`` must be plain data (dicts, lists, scalars) without interpolations
    (``interpolations``: allowed, for a command's overrides; a target is never one). Calls nothing."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_target_" and allowed is not None:
                if not isinstance(value, str) or value not in allowed:
                    raise UnsafeConfigError(f"{path}={value!r} is not allowed: only msslab's own classes and "
                                            f"torch's optimizers and schedulers may be built from a stored config")
            elif key in _FLAGS:
                # bool and str only: 1 == True would pass a plain ``in`` test
                if not isinstance(value, (bool, str)) or value not in _FLAGS[key]:
                    raise UnsafeConfigError(f"{path}={value!r} is not allowed: it must be one of {list(_FLAGS[key])}")
            elif key == "_args_" and not isinstance(value, list):
                raise UnsafeConfigError(f"{path}: must be a list, got {type(value).__name__}")
            check_config(value, allowed, path, interpolations)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            check_config(value, allowed, f"{prefix}[{index}]", interpolations)
    elif isinstance(node, str) and "${" in node and not interpolations:
        raise UnsafeConfigError(f"{prefix}={node!r} is not allowed: a stored config holds no interpolations "
                                f"(it is stored resolved; a resolver could run code)")
    elif not (node is None or isinstance(node, (str, int, float, bool))):
        raise UnsafeConfigError(f"{prefix}: a {type(node).__name__} is not plain config data")
