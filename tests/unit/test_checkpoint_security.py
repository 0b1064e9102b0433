"""A checkpoint's stored config never makes Hydra call anything outside msslab's allow-list.

Each payload below, loaded by a msslab without the check, runs: it writes a marker file or
truncates one (checked once by hand against the unfixed load_checkpoint). Here none runs,
and each is refused with a one-line error naming its key.
"""

from __future__ import annotations

import pickle
import shlex

import pytest
import torch
from hydra import compose, initialize_config_dir

from msslab import CONFIG_DIR
from msslab.errors import CheckpointError
from msslab.system import build_system, load_checkpoint

CONF_DIR = CONFIG_DIR
TINY = ["logger=none", "paths.output_dir=unused", "data.sample_rate=8000", "stft.n_fft=64", "stft.hop_length=16",
        "model=lstm", "model.nb_layers=1", "model.hidden_size=8"]


@pytest.fixture(scope="module")
def checkpoint():
    """What msslab-train writes (state dict + resolved config) for a tiny system."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=TINY)
    system = build_system(cfg, ["vocals", "accompaniment"], nb_channels=2, residual=False)
    return {"state_dict": system.state_dict(), "msslab_config": system.config}


def _save(checkpoint, tmp_path, **nodes):
    config = dict(checkpoint["msslab_config"]) | nodes
    path = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": checkpoint["state_dict"], "msslab_config": config}, path)
    return path


def _refused(path, key):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"msslab_config.{key}" in message, message
    return message


def test_a_genuine_checkpoint_loads(checkpoint, tmp_path):
    system = load_checkpoint(_save(checkpoint, tmp_path))
    assert system.targets == ["vocals", "accompaniment"] and type(system.model).__name__ == "RNNSeparator"


def test_os_system_is_refused(checkpoint, tmp_path):
    marker = tmp_path / "os-system-ran"
    payload = {"_target_": "os.system", "_args_": [f"touch {shlex.quote(str(marker))}"]}
    path = _save(checkpoint, tmp_path, stft=payload)
    assert "'os.system' is not allowed" in _refused(path, "stft._target_")
    assert not marker.exists()


def test_a_nested_target_is_refused(checkpoint, tmp_path):
    marker = tmp_path / "nested-ran"
    model = dict(checkpoint["msslab_config"]["model"])
    model["bands"] = {"_target_": "os.system", "_args_": [f"touch {shlex.quote(str(marker))}"]}
    _refused(_save(checkpoint, tmp_path, model=model), "model.bands._target_")
    assert not marker.exists()


def test_write_text_then_torch_load_chain_is_refused(checkpoint, tmp_path):
    # Path.write_text drops a protocol-0 (ASCII) pickle of os.system; torch.load(weights_only=False)
    # unpickles it: the loss node writes the file, the optimizer node (instantiated next) runs it.
    marker, dropped = tmp_path / "chain-ran", tmp_path / "dropped.pkl"

    class Touch:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    loss = {"_target_": "pathlib.Path.write_text",
            "_args_": [{"_target_": "pathlib.Path", "_args_": [str(dropped)]}, pickle.dumps(Touch(), 0).decode()]}
    optimizer = {"_target_": "torch.load", "f": str(dropped), "weights_only": False}
    path = _save(checkpoint, tmp_path, loss=loss, optimizer=optimizer)
    assert "'pathlib.Path.write_text' is not allowed" in _refused(path, "loss._target_")
    assert not dropped.exists() and not marker.exists()


def test_builtins_open_is_refused(checkpoint, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    path = _save(checkpoint, tmp_path, loss={"_target_": "builtins.open", "file": str(victim), "mode": "w"})
    _refused(path, "loss._target_")
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("nodes, key", [
    # a prefix of an allowed name walks on to anything the module imported
    ({"optimizer": {"_target_": "msslab.system.torch.load", "f": "x"}}, "optimizer._target_"),
    ({"optimizer": {"_target_": "torch.optim.Adam", "_partial_": "yes", "lr": 0.1}}, "optimizer._partial_"),
    ({"optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": "${oc.env:HOME}"}}, "optimizer.lr"),
    ({"data": {"sample_rate": "${oc.env:HOME}"}}, "data.sample_rate"),  # read by msslab-eval, never built
])
def test_other_ways_in_are_refused(checkpoint, tmp_path, nodes, key):
    _refused(_save(checkpoint, tmp_path, **nodes), key)


def test_every_shipped_model_loss_and_scheduler_is_allowed():
    """A new model, loss or scheduler config must come with its allow-list entry (msslab.trust)."""
    import yaml

    from msslab.trust import checkpoint_targets

    shipped = {yaml.safe_load(p.read_text())["_target_"]
               for group in ("model", "loss", "scheduler") for p in (CONF_DIR / group).glob("*.yaml")}
    train = yaml.safe_load((CONF_DIR / "train.yaml").read_text())
    shipped |= {train["stft"]["_target_"], train["optimizer"]["_target_"]}
    assert shipped <= checkpoint_targets(), shipped - checkpoint_targets()


@pytest.mark.slow
def test_msslab_separate_refuses_it_in_one_line(checkpoint, cli, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    path = _save(checkpoint, tmp_path, loss={"_target_": "builtins.open", "file": str(victim), "mode": "w"})
    song = tmp_path / "song.wav"
    import numpy as np
    import soundfile as sf
    sf.write(song, np.zeros((8000, 2), dtype="float32"), 8000)
    result = cli.run("msslab-separate", f"ckpt={path}", f"input={song}", f"output={tmp_path / 'out'}", timeout=300)
    assert result.returncode != 0 and "msslab_config.loss._target_='builtins.open' is not allowed" in result.output, \
        result.tail()
    assert "Traceback" not in result.output and victim.read_text() == "keep me"


def test_a_checkpoint_with_the_old_key_layout_loads(tmp_path):
    """Checkpoints written before the Separator held the network (keys ``model.*``, ``spectrogram.*``)
    load into ``separator.model.*`` and separate as the system that wrote them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=TINY)
    system = build_system(cfg, ["vocals", "accompaniment"], nb_channels=2, residual=False)
    with torch.no_grad():
        for parameter in system.model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    state = system.state_dict()
    assert state and all(key.startswith("separator.") for key in state)
    old = {key.removeprefix("separator."): value for key, value in state.items()}  # the layout of msslab 0.1.0
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old, "msslab_config": system.config}, path)
    loaded = load_checkpoint(path)
    for key, value in state.items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    mixture = torch.randn(1, system.config["nb_channels"], 3000)
    with torch.no_grad():
        torch.testing.assert_close(loaded.separator(mixture), system.eval().separator(mixture))
