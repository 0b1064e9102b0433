"""Inference (``msslab.separation.inference``) and the torch Wiener filter (``msslab.model.wiener``).

The Wiener filter is compared with norbert, the reference numpy implementation; chunked,
batched, streamed separation with the oracle (a per-bin mask: no context) is compared with
separating the whole track at once; and ``msslab-eval`` is checked to apply the command's
separation settings to a checkpoint and to record them.
"""

from __future__ import annotations

import json

import norbert
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from msslab.errors import MsslabError
from msslab.separation.inference import SeparationSettings, resolve_device, separate, separate_stream
from msslab.model import OracleIRM, Spectrogram
from msslab.model.wiener import expectation_maximization, wiener
from msslab.separation import Separator
from msslab.system import SeparationSystem


def norbert_reference(v: np.ndarray, x: np.ndarray, iterations: int, residual: bool, dtype) -> np.ndarray:
    """norbert item by item, in its ``(frames, bins, channels[, sources])`` layout, at ``dtype`` precision."""
    out = []
    for v_item, x_item in zip(v, x):
        v_n = v_item.transpose(3, 2, 1, 0).astype(np.float64 if dtype == np.complex128 else np.float32)
        x_n = x_item.transpose(2, 1, 0).astype(dtype).copy()
        if residual:
            v_n = norbert.residual_model(v_n, x_n)
        out.append(norbert.wiener(v_n, x_n, iterations=iterations)[..., : v_item.shape[0]].transpose(3, 2, 1, 0))
    return np.stack(out)


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_torch_wiener_equals_norbert(channels, residual, iterations):
    """float64: equal to norbert's float64 to 1e-9 of the mixture's peak; float32: to norbert on
    complex64 input within 1e-4 (norbert's regulariser sqrt(eps) depends on the precision)."""
    rng = np.random.default_rng(channels + 10 * iterations)
    batch, sources, bins, frames = 2, 3, 33, 25
    x = 3 * (rng.standard_normal((batch, channels, bins, frames)) + 1j * rng.standard_normal((batch, channels, bins, frames)))
    # Magnitudes that roughly explain the mixture, as masked estimates do.
    v = np.abs(x)[:, None] * rng.dirichlet(np.ones(sources), size=(batch, channels, bins, frames)).transpose(0, 4, 1, 2, 3)
    peak = np.abs(x).max()
    for float64, dtype, tolerance in [(True, np.complex128, 1e-9), (False, np.complex64, 1e-4)]:
        ours = wiener(torch.from_numpy(v), torch.from_numpy(x), iterations, residual=residual, float64=float64,
                  exponent=2.0)
        assert ours.shape == v.shape
        error = np.abs(ours.numpy() - norbert_reference(v, x, iterations, residual, dtype)).max() / peak
        assert error < tolerance, (float64, error)


@pytest.mark.parametrize("exponent", [1.0, 1.25, 1.5])
def test_wiener_exponent_sets_the_spectrogram_power_of_the_gains(exponent):
    """One EM iteration, mono, in float64: the gain of source j is |y_j|^p R_j / sum_k |y_k|^p R_k,
    R_j the frame sum of |y_j|^2 over that of |y_j|^p (y: the soft-masked first estimates), so the
    estimates still add up to the mixture; a lower p gives softer gains than the powers (p = 2)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 1, 17, 21)) + 1j * rng.standard_normal((1, 1, 17, 21))
    v = np.abs(x)[:, None] * rng.dirichlet(np.ones(3), size=(1, 1, 17, 21)).transpose(0, 4, 1, 2, 3)
    y0 = v / v.sum(1, keepdims=True) * x[:, None]
    power = np.abs(y0) ** 2
    weight = power ** (exponent / 2)
    r = power.sum(-1, keepdims=True) / weight.sum(-1, keepdims=True)
    expected = weight * r / (weight * r).sum(1, keepdims=True) * x[:, None]
    ours = wiener(torch.from_numpy(v), torch.from_numpy(x), 1, float64=True, exponent=exponent).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7 * np.abs(x).max())
    np.testing.assert_allclose(ours.sum(1), x, rtol=0, atol=1e-7 * np.abs(x).max())
    powers = wiener(torch.from_numpy(v), torch.from_numpy(x), 1, float64=True, exponent=2.0).numpy()
    assert np.abs(ours - powers).max() > 1e-2 * np.abs(x).max()
    spread = [np.std(np.abs(g / x[:, None])) for g in (ours, powers)]  # gains' spread over sources and bins
    assert (spread[0] < spread[1]) == (exponent < 2)


def test_wiener_exponent_setting_is_checked_and_defaults_to_powers():
    assert SeparationSettings.resolve({}, {"wiener_iterations": 1}).wiener_exponent == 2.0  # an older checkpoint
    assert SeparationSettings.resolve({"wiener_exponent": None}, {"wiener_exponent": 1.25}).wiener_exponent == 1.25
    for bad in (0, -1.0, "soft"):
        with pytest.raises(MsslabError, match="separation.wiener_exponent: invalid value"):
            SeparationSettings.resolve({"wiener_exponent": bad})


def test_an_old_checkpoint_separates_as_it_did_when_the_defaults_move():
    today = SeparationSettings()
    assert (today.wiener_iterations, today.wiener_exponent) == (1, 1.0)  # the main job filters (conf/train.yaml)
    # a checkpoint without a separation block (written before it existed) masks, as it did then
    assert SeparationSettings.resolve(None, {}).wiener_iterations == 0
    assert SeparationSettings.resolve({"wiener_iterations": None}, {}).wiener_iterations == 0
    # one that stored the block keeps it; the command overrides it; no checkpoint: today's defaults
    assert SeparationSettings.resolve(None, {"wiener_iterations": 1, "wiener_exponent": 1.0}) == today
    assert SeparationSettings.resolve({"wiener_iterations": 3}, {}).wiener_iterations == 3
    assert SeparationSettings.resolve({}, None) == today


def test_a_checkpoint_without_a_separation_block_loads_with_plain_masks(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from msslab import CONFIG_DIR
    from msslab.system import build_system

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none", f"paths.output_dir={tmp_path}"])
    assert build_system(cfg, ["vocals", "accompaniment"], 2, False).separator.wiener_iterations == 1
    with open_dict(cfg):
        del cfg["separation"]  # as an old checkpoint's stored config
    old = build_system(OmegaConf.create(cfg), ["vocals", "accompaniment"], 2, False).separator
    assert (old.wiener_iterations, old.wiener_exponent) == (0, 2.0)


def test_each_setting_has_one_default():
    """conf/train.yaml's `separation` block is where its defaults are written: the dataclass, the
    Separator and the commands (eval.yaml, separate.yaml: null, "the checkpoint's") agree with it;
    Spectrogram's code defaults are what the composed `stft` node gives."""
    import inspect

    from hydra import compose, initialize_config_dir

    from msslab import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        train = compose("train", overrides=["paths.output_dir=unused"])
        commands = {name: compose(name) for name in ("eval", "separate")}
    assert SeparationSettings().as_dict() == OmegaConf.to_container(train.separation)
    for name, cfg in commands.items():
        assert OmegaConf.to_container(cfg.separation) == dict.fromkeys(SeparationSettings().as_dict()), name
    defaults = {k: p.default for k, p in inspect.signature(Separator).parameters.items() if k.startswith("wiener")}
    assert defaults == SeparationSettings().wiener
    spectrogram = {k: p.default for k, p in inspect.signature(Spectrogram).parameters.items()
                   if p.default is not inspect.Parameter.empty}
    assert spectrogram == {k: train.stft[k] for k in spectrogram}
    assert {"n_fft", "hop_length"} <= set(inspect.signature(Spectrogram).parameters) - set(spectrogram)
    for function in (wiener, expectation_maximization):  # no defaults of their own for these
        parameters = inspect.signature(function).parameters
        assert parameters["iterations"].default is parameters["exponent"].default is inspect.Parameter.empty


def oracle_system(**kwargs) -> SeparationSystem:
    return SeparationSystem(Separator(OracleIRM(), Spectrogram(n_fft=256, hop_length=64, sample_rate=8000), ["a", "b"],
                                      **kwargs)).eval()


def random_track(seconds: float, extra: int = 17, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((2, 2, int(8000 * seconds) + extra)).astype(np.float32))


@pytest.mark.parametrize("wiener_iterations", [0, 1])
def test_chunked_batched_separation_matches_the_whole_track(wiener_iterations):
    """Cross-faded chunks of the oracle give the unchunked result, whatever the batch size."""
    system = oracle_system()
    targets = random_track(3)
    mixture = targets.sum(0)
    whole = separate(system, mixture, SeparationSettings(chunk_seconds=100, wiener_iterations=wiener_iterations),
                     targets=targets)
    results = {}
    for batch_size in (1, 3):
        settings = SeparationSettings(chunk_seconds=1, overlap_seconds=0.25, batch_size=batch_size,
                                      wiener_iterations=wiener_iterations)
        results[batch_size] = separate(system, mixture, settings, targets=targets)
        assert results[batch_size].shape == whole.shape == targets.shape
    torch.testing.assert_close(results[3], results[1], rtol=1e-5, atol=1e-5)  # batching changes nothing
    chunked = results[1].numpy()
    # Equal away from the STFT edge effects of each chunk, and summing to the mixture everywhere.
    snr = 10 * np.log10(np.sum(whole.numpy() ** 2) / np.sum((chunked - whole.numpy()) ** 2))
    assert snr > 20
    residual = 10 * np.log10(np.sum(mixture.numpy() ** 2) / np.sum((chunked.sum(0) - mixture.numpy()) ** 2))
    assert residual > 60 if wiener_iterations == 0 else residual > 30


def test_short_tracks_are_padded_for_the_stft():
    system = oracle_system()
    targets = random_track(0, extra=100)  # shorter than n_fft
    estimates = separate(system, targets.sum(0), SeparationSettings(wiener_iterations=0), targets=targets)
    assert estimates.shape == targets.shape
    torch.testing.assert_close(estimates.sum(0), targets.sum(0), rtol=1e-4, atol=1e-4)


def test_stream_holds_only_one_batch_of_chunks():
    """Finished samples leave before later chunks are read: memory does not grow with the track."""
    system = oracle_system()
    targets = random_track(20)
    mixture = targets.sum(0)
    chunk, batch_size = 8000, 2
    settings = SeparationSettings(chunk_seconds=1, overlap_seconds=0.25, batch_size=batch_size)
    furthest = []

    def read(start, stop):
        furthest.append(stop)
        return mixture[:, start:stop], targets[..., start:stop]

    position = 0
    for block in separate_stream(system, read, mixture.shape[-1], settings):
        # A block is handed out right after the batch it completes: nothing is read ahead.
        assert max(furthest) <= position + block.shape[-1] + batch_size * chunk
        assert block.shape[-1] <= batch_size * chunk
        position += block.shape[-1]
    assert position == mixture.shape[-1]
    assert len(furthest) == len(set(furthest))  # every chunk read once


def test_settings_from_the_command_win_over_the_checkpoint():
    checkpoint = {"chunk_seconds": 10.0, "overlap_seconds": 0.5, "wiener_iterations": 2}  # an older checkpoint
    settings = SeparationSettings.resolve({"wiener_iterations": 0, "batch_size": 4, "chunk_seconds": None}, checkpoint)
    # its missing exponent is the one it was written with (powers), not today's default
    assert settings == SeparationSettings(chunk_seconds=10.0, overlap_seconds=0.5, batch_size=4, wiener_iterations=0,
                                          wiener_exponent=2.0)
    with pytest.raises(MsslabError, match="separation.wiener_iteration"):
        SeparationSettings.resolve({"wiener_iteration": 1})
    with pytest.raises(MsslabError, match="separation.batch_size"):
        SeparationSettings.resolve({"batch_size": 0})


def test_defaults_are_those_of_train_yaml(compose_train, tmp_path):
    cfg = compose_train([], tmp_path)
    assert SeparationSettings.resolve(cfg.separation) == SeparationSettings()


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MsslabError, match="device: unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(MsslabError, match="device=cuda:1: no CUDA device"):
            resolve_device("cuda:1")


def test_bf16_autocast_runs_the_network_in_bfloat16():
    from msslab.model import RNNSeparator

    torch.manual_seed(0)
    spectrogram = Spectrogram(n_fft=256, hop_length=64, sample_rate=8000)
    model = RNNSeparator(spectrogram.nb_bins, spectrogram.max_bin, 2, 2, hidden_size=16, nb_layers=1)
    system = SeparationSystem(Separator(model, spectrogram, ["a", "b"])).eval()
    mixture = random_track(2)[0]
    plain = separate(system, mixture, SeparationSettings(chunk_seconds=1))
    reduced = separate(system, mixture, SeparationSettings(chunk_seconds=1, autocast=True))
    assert reduced.dtype == torch.float32
    difference = (reduced - plain).abs().max()
    assert 0 < difference < 0.05 * plain.abs().max()  # bfloat16 rounding: close but not identical


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_separation_equals_cpu():
    system = oracle_system()
    targets = random_track(3)
    settings = SeparationSettings(chunk_seconds=1, overlap_seconds=0.25, batch_size=2, wiener_iterations=1)
    on_cpu = separate(system, targets.sum(0), settings, targets=targets)
    on_gpu = separate(system.to("cuda"), targets.sum(0), settings, targets=targets)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_msslab_eval_applies_and_records_the_commands_separation_settings(smoke_run, cli):
    """The smoke checkpoint was trained with wiener_iterations=0: the command's 1 must change the scores."""
    common = ["msslab-eval", f"ckpt={smoke_run.last_checkpoint}", "experiment=smoke", "logger=none", "metric.n_jobs=1"]
    runs = cli.run_all({
        "own": [*common, "hydra.run.dir=own"],
        "wiener": [*common, "hydra.run.dir=wiener", "separation.wiener_iterations=1", "separation.batch_size=2",
                   "device=cpu"],
        "valid": [*common, "hydra.run.dir=valid", "split=valid"],
        "bad_split": [*common, "hydra.run.dir=bad_split", "split=train"],
    })
    bad = runs.pop("bad_split")
    assert bad.returncode == 1 and "error: split: 'train' is not one of test, valid" in bad.stderr, bad.tail()
    results = {}
    for key, result in runs.items():
        assert result.returncode == 0, result.tail()
        results[key] = json.loads((cli.cwd / key / "results.json").read_text())
    assert results["own"]["separation"]["wiener_iterations"] == 0
    # split=valid scores the validation songs instead of the test songs, and says so
    assert (results["own"]["split"], results["valid"]["split"]) == ("test", "valid")
    assert results["valid"]["tracks"] and not set(results["valid"]["tracks"]) & set(results["own"]["tracks"])
    assert results["own"]["separation"]["chunk_seconds"] == smoke_run.results["separation"]["chunk_seconds"]
    assert results["wiener"]["separation"] | {"device": "cpu"} == results["own"]["separation"] | {
        "wiener_iterations": 1, "batch_size": 2, "device": "cpu"}
    own, filtered = results["own"]["sources"], results["wiener"]["sources"]
    assert own.keys() == filtered.keys()
    assert any(abs(own[s]["SDR"] - filtered[s]["SDR"]) > 1e-3 for s in own)
    # Re-evaluating with the checkpoint's own settings reproduces the training run's scores.
    for source, scores in smoke_run.results["sources"].items():
        assert own[source]["SDR"] == pytest.approx(scores["SDR"], abs=1e-6)


@pytest.mark.slow
def test_msslab_eval_without_a_checkpoint_separates_as_the_experiment_does(cli):
    """experiment=fullband filters with one Wiener iteration (spectrograms^1.25): its oracle must too (the
    command still wins)."""
    # the data module prepares every split: small training and validation sets keep the 44.1 kHz synthesis short
    common = ["msslab-eval", "model=oracle_irm", "experiment=fullband", "data=synthetic", "data.test_tracks.nb_tracks=1",
              "data.test_tracks.seconds=4", "data.train_tracks.nb_tracks=2", "data.train_tracks.seconds=4",
              "data.valid_tracks.nb_tracks=1", "data.valid_tracks.seconds=4", "logger=none", "metric.n_jobs=1"]
    runs = cli.run_all({"recipe": [*common, "hydra.run.dir=recipe"],
                        "plain": [*common, "hydra.run.dir=plain", "separation.wiener_iterations=0"]})
    results = {}
    for key, result in runs.items():
        assert result.returncode == 0, result.tail()
        results[key] = json.loads((cli.cwd / key / "results.json").read_text())
    assert results["recipe"]["separation"]["wiener_iterations"] == 1
    assert results["recipe"]["separation"]["wiener_exponent"] == 1.25  # the experiment's softer gains
    assert results["plain"]["separation"]["wiener_iterations"] == 0
    recipe, plain = results["recipe"]["sources"], results["plain"]["sources"]
    assert any(abs(recipe[s]["SDR"] - plain[s]["SDR"]) > 1e-3 for s in recipe)


@pytest.mark.slow
def test_cuda_asked_for_without_one_is_a_one_line_error(smoke_run, cli):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = cli.run("msslab-eval", f"ckpt={smoke_run.last_checkpoint}", "device=cuda", "logger=none")
    assert result.returncode != 0
    assert "device=cuda: no CUDA device" in result.output and "Traceback" not in result.output, result.tail()


def test_separate_uses_the_separators_wiener_filter_unless_settings_are_given():
    """A Separator owns its Wiener settings (``replace`` gives another filter over the same weights);
    settings passed to ``separate`` are complete and replace them for that call."""
    separator = oracle_system().separator.replace(wiener_iterations=0)
    filtered = separator.replace(wiener_iterations=1)
    assert filtered.model is separator.model and filtered.spectrogram is separator.spectrogram
    assert (separator.wiener_iterations, filtered.wiener_iterations) == (0, 1)
    targets = random_track(1, seed=3)
    mixture = targets.sum(0)
    plain = separate(separator, mixture, targets=targets)
    own = separate(filtered, mixture, targets=targets)
    assert (own - plain).abs().max() > 1e-3
    torch.testing.assert_close(separate(separator, mixture, SeparationSettings(wiener_iterations=1), targets=targets), own)
    torch.testing.assert_close(separate(filtered, mixture, SeparationSettings(wiener_iterations=0), targets=targets), plain)
    with pytest.raises(TypeError, match="wiener_iteration"):
        separator.replace(wiener_iteration=1)
