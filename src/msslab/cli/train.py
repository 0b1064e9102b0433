"""``msslab-train``: train a separator, evaluate its best checkpoint, write ``results.json``.

A Hydra app: ``msslab-train model=gru 'augmentation=[pitch_shift,reverb]' trainer.max_epochs=20``.
Returns the best validation score, so Hydra sweepers (Optuna) can maximise it. The work is
:func:`msslab.training.run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .. import CONFIG_DIR
from ..augmentation import check_overrides
from ..errors import exit_on_user_error
from ..runs import preserve_hydra_files, resume_arguments
from ..training import run


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    return run(cfg)


@exit_on_user_error
def _prepare_argv(argv: list[str]) -> list[str]:
    # Hydra names unknown group options itself, except inside a list: augmentation=[reverb,echo].
    check_overrides(argv, str(CONFIG_DIR))
    argv = resume_arguments(argv)
    for run_dir in _given_run_dirs(argv):
        preserve_hydra_files(run_dir)  # before Hydra writes this command's .hydra over an older run's
    return argv


def main():
    """Console script ``msslab-train`` (and ``python -m msslab.cli.train``)."""
    sys.argv[1:] = _prepare_argv(sys.argv[1:])
    return _hydra_main()


def _given_run_dirs(argv: list[str]) -> list[Path]:
    """The existing run directories a command names: ``hydra.run.dir``, or in a sweep each job
    folder of ``hydra.sweep.dir``."""
    def value(key):
        return next((a.split("=", 1)[1] for a in reversed(argv) if a.split("=", 1)[0].lstrip("+") == key), None)

    if any(a in ("-m", "--multirun") for a in argv):
        sweep = value("hydra.sweep.dir")
        return [p for p in Path(sweep).iterdir() if p.is_dir()] if sweep and Path(sweep).is_dir() else []
    run_dir = value("hydra.run.dir")
    return [Path(run_dir)] if run_dir and Path(run_dir).is_dir() else []


if __name__ == "__main__":
    main()
