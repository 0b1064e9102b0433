"""``msslab-compare``: many runs in, tables and figures out.

    msslab-compare multirun/ablation
    msslab-compare multirun/ablation multirun/ablation2 baseline=augmentation=[] test=bootstrap
    msslab-compare dirs=[multirun/paper] paper_figures=true output=reports/paper

Reads every ``results.json`` under the given directories and writes
``comparison.md``, ``comparison.csv`` (one row per variant), PNG figures and
paired tests against a baseline variant; see ``conf/compare.yaml`` for the
options and :func:`msslab.report.compare_runs` for the Python entry point.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from .. import CONFIG_DIR
from ..errors import exit_on_user_error
from ..report import CompareError, compare_runs

log = logging.getLogger("msslab.cli.compare")

# Hydra flags that take the next argument as their value
_FLAGS_WITH_VALUE = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package",
                     "--experimental-rerun"}
_FLAG_CHOICES = {"-c": {"job", "hydra", "all"}, "--cfg": {"job", "hydra", "all"},
                 "-i": {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"},
                 "--info": {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}}


def _quote(text: str) -> str:
    """``text`` as one Hydra string value, whatever characters it holds."""
    text = text.replace("\\", "\\\\")
    return "'" + text.replace("'", "\\'") + "'"


def hydra_argv(argv: list[str]) -> list[str]:
    """Make the command line friendlier before Hydra parses it.

    Bare directories become ``dirs=[...]`` (``msslab-compare multirun/a multirun/b``),
    and a ``baseline=`` value is quoted, so ``baseline=augmentation=[]`` needs no
    Hydra quoting. Everything else passes through unchanged.
    """
    out, positional, previous = [], [], None
    for arg in argv:
        takes_value = previous in _FLAGS_WITH_VALUE or arg in _FLAG_CHOICES.get(previous, ())
        if takes_value or arg.startswith("-"):
            out.append(arg)
        elif "=" not in arg:
            positional.append(arg)
        elif arg.startswith("baseline="):
            value = arg.partition("=")[2]
            quoted = value[:1] in ("'", '"') or value in ("", "null")
            out.append(arg if quoted else "baseline=" + _quote(value))
        else:
            out.append(arg)
        previous = arg
    if positional:
        out.append("dirs=[" + ",".join(_quote(p) for p in positional) + "]")
    return out


def run(cfg: DictConfig):
    """Build the report that ``cfg`` (conf/compare.yaml) describes; returns the :class:`~msslab.report.Report`."""
    if OmegaConf.is_missing(cfg, "dirs") or not cfg.dirs:
        raise CompareError("no run directories given: msslab-compare <dir> [<dir> ...]  (or dirs=[<dir>,...])")
    dirs = [cfg.dirs] if isinstance(cfg.dirs, str) else list(cfg.dirs)
    baseline = cfg.baseline
    if baseline is not None and not isinstance(baseline, str):
        baseline = OmegaConf.to_container(baseline)
    report = compare_runs(
        dirs,
        output=cfg.output,
        baseline=baseline,
        metrics=list(cfg.metrics),
        plot_metrics=list(cfg.plot_metrics),
        test=cfg.test,
        alpha=float(cfg.alpha),
        correction=cfg.correction,
        paper_figures=bool(cfg.paper_figures),
        paper_sources=list(cfg.paper_sources),
        pool_over=list(cfg.pool_over),
        progress=cfg.progress,
    )
    log.info("baseline: %s", report.baseline)
    log.info("wrote %s", report.files["markdown"])
    return report


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="compare")
@exit_on_user_error  # a CompareError is a user's mistake: one line, exit code 1, as every command
def _app(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """Console script ``msslab-compare`` (and ``python -m msslab.cli.compare``)."""
    sys.argv[1:] = hydra_argv(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
