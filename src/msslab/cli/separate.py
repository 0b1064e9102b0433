"""``msslab-separate ckpt=model.ckpt input=song.flac output=separated``: one file per target source.

Writes ``separated/song/<target>.wav`` at the input's sample rate, channel count and length
(:mod:`msslab.separation.files`); ``streaming=true`` separates block by block with a causal
model (:mod:`msslab.separation.stream_files`). Nothing is overwritten unless ``overwrite=true``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from .. import CONFIG_DIR
from ..errors import AudioFileError, exit_on_user_error
from ..separation.files import output_paths, separate_files
from ..separation.inference import SeparationSettings, resolve_device
from ..separation.stream_files import stream_files
from ..system import load_checkpoint


def separate(cfg: DictConfig) -> list[Path]:
    """Separate every input of ``cfg`` (conf/separate.yaml); returns the written files."""
    inputs = [Path(p) for p in (cfg.input if isinstance(cfg.input, (list, ListConfig)) else [cfg.input])]
    system = load_checkpoint(cfg.ckpt, map_location=resolve_device(cfg.device))
    # The command's separation settings win; the ones it leaves null are the checkpoint's.
    settings = SeparationSettings.resolve(OmegaConf.to_container(cfg.separation), system.config.get("separation") or {})
    separator = system.separator.replace(**settings.wiener)
    plan = output_paths(inputs, Path(cfg.output), separator.targets)
    existing = [str(p) for files in plan.values() for p in files.values() if p.exists()]
    if existing and not cfg.overwrite:
        raise AudioFileError(f"output: {len(existing)} file(s) exist already, e.g. {existing[0]}; "
                             "choose another output= or pass overwrite=true")
    if cfg.streaming:  # block by block with a causal model
        return stream_files(separator, plan, cfg.block_ms, cfg.wiener_context_ms)
    return separate_files(separator, plan, settings)


@hydra.main(config_path=str(CONFIG_DIR), config_name="separate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console script ``msslab-separate`` (and ``python -m msslab.cli.separate``)."""
    separate(cfg)


if __name__ == "__main__":
    main()
