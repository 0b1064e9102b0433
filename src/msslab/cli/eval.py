"""``msslab-eval ckpt=PATH`` (or ``model=oracle_irm``, ``model=mixture``): score a model on the test set.

Writes ``museval/<track>.json`` and ``results.json`` into the run directory and prints the
table; the work is :func:`msslab.evaluation.evaluate`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .. import CONFIG_DIR
from ..errors import exit_on_user_error
from ..evaluation import evaluate


@hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console script ``msslab-eval`` (and ``python -m msslab.cli.eval``)."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
