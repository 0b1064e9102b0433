"""Bad input to the console scripts: a non-zero exit and one message naming the file or key.

All commands run concurrently in one fixture (each pays the import time of torch and
Lightning; together they share the cores instead of queueing).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="module")
def errors(smoke_run, cli_factory, tmp_path_factory):
    base = tmp_path_factory.mktemp("errors")
    song = base / "song.wav"
    sf.write(song, np.zeros((8000, 2), dtype=np.float32) + 0.1, 8000)
    garbage = base / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio" * 10)
    not_a_checkpoint = base / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    missing = base / "missing.ckpt"  # the same code reads checkpoints for msslab-eval and msslab-separate
    ckpt = f"ckpt={smoke_run.last_checkpoint}"
    commands = {
        "train_typo_in_key": ["msslab-train", "experiment=smoke", "model.hiden_size=3"],
        "train_unknown_option": ["msslab.cli.train", "data=nonexistent"],  # python -m msslab.cli.train
        "separate_missing_checkpoint": ["msslab-separate", f"ckpt={missing}", f"input={song}", f"output={base / 'a'}"],
        "eval_not_a_checkpoint": ["msslab-eval", f"ckpt={not_a_checkpoint}", "experiment=smoke",
                                  f"hydra.run.dir={base / 'eval'}"],
        "separate_unreadable_audio": ["msslab-separate", ckpt, f"input=[{song},{garbage}]", f"output={base / 'c'}"],
        "separate_missing_audio": ["msslab-separate", ckpt, f"input={base / 'nowhere.wav'}", f"output={base / 'd'}"],
    }
    results = cli_factory(base).run_all(commands)
    return base, results


def check(result, *names: str):
    """Failed, named every one of ``names``, and said so without a Python traceback."""
    assert result.returncode != 0, result.tail()
    for name in names:
        assert name in result.output, (name, result.tail())
    assert "Traceback" not in result.output, result.tail()
    return result.output


def test_unknown_config_key_is_named(errors):
    base, results = errors
    check(results["train_typo_in_key"], "model.hiden_size")
    assert not (base / "outputs").exists()  # rejected before a run directory is made


def test_unknown_group_option_is_named_with_the_choices(errors):
    output = check(errors[1]["train_unknown_option"], "data/nonexistent")
    for choice in ("synthetic", "musdb18", "musdb18hq", "stem_folder"):
        assert choice in output


def test_missing_checkpoint_is_named(errors):
    base, results = errors
    check(results["separate_missing_checkpoint"], str(base / "missing.ckpt"), "does not exist")
    assert not (base / "a").exists()


def test_a_file_that_is_not_a_checkpoint_is_named(errors):
    base, results = errors
    check(results["eval_not_a_checkpoint"], str(base / "notes.ckpt"), "could not be read")
    assert not (base / "eval" / "results.json").exists()


def test_unreadable_audio_is_named_and_nothing_is_written(errors):
    base, results = errors
    output = check(results["separate_unreadable_audio"], str(base / "garbage.wav"), "not a readable audio file")
    assert str(base / "song.wav") + " " not in output  # the good file is not blamed
    assert not (base / "c").exists()  # every input is read before the first output is written


def test_missing_audio_is_named(errors):
    base, results = errors
    check(results["separate_missing_audio"], str(base / "nowhere.wav"), "does not exist")
