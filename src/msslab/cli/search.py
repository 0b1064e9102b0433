"""``msslab-search [train overrides] [sweep overrides]``: an Optuna study with pruning (see :mod:`msslab.search`)."""

from __future__ import annotations

import logging
import sys

from ..errors import exit_on_user_error
from ..search import Search, log


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Console script ``msslab-search`` (and ``python -m msslab.cli.search``)."""
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][%(name)s] %(message)s")
    log.setLevel(logging.INFO)  # the study's progress; not every library's
    summary = Search(sys.argv[1:] if argv is None else argv).run()
    print(f"study {summary['study_name']}: {summary['trials']}; best: "
          f"{summary.get('best_value')} {summary.get('best_params', '')}")


if __name__ == "__main__":
    main()
