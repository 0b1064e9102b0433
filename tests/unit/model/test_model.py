"""The RNN separator, built from the real ``model`` configs exactly as ``msslab-train`` builds it."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from msslab import CONFIG_DIR
from msslab.model import RNNSeparator
from msslab.system import build_system

VARIANTS = {"lstm": (nn.LSTM, False), "gru": (nn.GRU, False), "blstm": (nn.LSTM, True), "bgru": (nn.GRU, True)}
SOURCES = ["vocals", "drums", "bass", "other"]
CONF_DIR = CONFIG_DIR


def mixture(batch: int, channels: int, samples: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((batch, channels, samples)).astype(np.float32)) * 0.1


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """``{variant: composed config}`` for the four RNN variants (the real YAML, default sizes)."""
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("model")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # plain masks (the main job's default filters): the tests check what the masks give
        return {name: compose("train", overrides=[f"model={name}", f"paths.output_dir={out}",
                                                  "separation.wiener_iterations=0"])
                for name in VARIANTS}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_builds_its_cell_and_direction(configs, variant):
    cfg = configs[variant]
    system = build_system(cfg, SOURCES, nb_channels=2, residual=False)
    cell, bidirectional = VARIANTS[variant]
    rnn = system.model.rnn
    assert type(rnn) is cell and rnn.bidirectional is bidirectional
    assert rnn.num_layers == cfg.model.nb_layers
    # hidden_size is the total width, split over the directions.
    assert rnn.hidden_size * (2 if bidirectional else 1) == cfg.model.hidden_size
    assert system.model.nb_bins == cfg.stft.n_fft // 2 + 1


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("targets, channels", [(SOURCES, 2), (["vocals", "accompaniment"], 1)])
def test_variant_output_shapes(configs, variant, targets, channels):
    system = build_system(configs[variant], targets, nb_channels=channels, residual=False).eval()
    samples = 4001  # not a whole number of hops
    x = mixture(2, channels, samples)
    with torch.no_grad():
        spec = system.spectrogram(x)
        masks = system.model(spec.abs())
        estimates = system(x)
    frames = samples // system.spectrogram.hop_length + 1
    assert masks.shape == (2, len(targets), channels, system.spectrogram.nb_bins, frames)
    assert estimates.shape == (2, len(targets), channels, samples)
    # Softmax masks: a partition of the mixture, so the estimates add up to it.
    assert float(masks.min()) >= 0 and torch.allclose(masks.sum(1), torch.ones(()), atol=1e-5)
    assert float((estimates.sum(1) - x).norm() / x.norm()) < 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_only_bidirectional_variants_see_the_future(configs, variant):
    system = build_system(configs[variant], SOURCES, nb_channels=2, residual=False).eval()
    magnitude = system.spectrogram(mixture(1, 2, 6400)).abs()
    changed = magnitude.clone()
    cut = magnitude.shape[-1] // 2
    changed[..., cut:] *= 3.0
    with torch.no_grad():
        before, after = system.model(magnitude), system.model(changed)
    past = (before[..., :cut] - after[..., :cut]).abs().max().item()
    future = (before[..., cut:] - after[..., cut:]).abs().max().item()
    assert future > 1e-3  # the change is visible where it happens
    if VARIANTS[variant][1]:
        assert past > 1e-4
    else:
        assert past < 1e-6  # causal: usable for streaming


@pytest.mark.parametrize("mask", ["sigmoid", "relu"])
def test_independent_masks_are_nonnegative(mask):
    model = RNNSeparator(nb_bins=33, max_bin=20, nb_channels=2, nb_targets=3, hidden_size=16, nb_layers=1, mask=mask).eval()
    with torch.no_grad():
        masks = model(torch.rand(2, 2, 33, 7))
    assert masks.shape == (2, 3, 2, 33, 7) and float(masks.min()) >= 0
    if mask == "sigmoid":
        assert float(masks.max()) <= 1


def test_residual_class_leaves_room_for_the_rest():
    model = RNNSeparator(nb_bins=33, max_bin=33, nb_channels=2, nb_targets=2, hidden_size=16, nb_layers=1, residual=True).eval()
    with torch.no_grad():
        total = model(torch.rand(2, 2, 33, 7)).sum(1)
    assert float(total.max()) < 1 - 1e-4 and float(total.min()) > 0


def test_input_statistics_normalise_the_network_input():
    model = RNNSeparator(nb_bins=33, max_bin=20, nb_channels=2, nb_targets=2, hidden_size=16, nb_layers=1)
    magnitude = torch.rand(4, 2, 33, 50) * torch.linspace(0.1, 10, 33)[:, None] + 3.0
    model.set_input_stats(magnitude)
    x = magnitude[:, :, :20].permute(0, 1, 3, 2).reshape(-1, 20)
    normalised = (x - model.input_mean) / model.input_scale
    assert torch.allclose(normalised.mean(0), torch.zeros(20), atol=1e-4)
    assert torch.allclose(normalised.std(0), torch.ones(20), atol=1e-3)
    assert "input_mean" in model.state_dict()  # saved with the weights


@pytest.mark.parametrize("mask", ["softmax", "sigmoid"])
def test_coarse_masks_share_a_value_per_band_above_the_edge(mask):
    """201 bins at 8 kHz: 20 Hz apart. Above 1 kHz (bin 50) one value per 4 bins, the last band cut short."""
    model = RNNSeparator(nb_bins=201, max_bin=201, nb_channels=2, nb_targets=3, hidden_size=16, nb_layers=1, mask=mask,
                         sample_rate=8000, coarse_above=1000, coarse_width=4).eval()
    assert model.bands.fine_bins == 50 and model.bands.nb_values == 50 + 38  # ceil(151 / 4)
    assert model.decoder[-2].out_features == 3 * 2 * model.bands.nb_values
    with torch.no_grad():
        masks = model(torch.rand(2, 2, 201, 9))  # (B, S, C, F, T)
    assert masks.shape == (2, 3, 2, 201, 9)
    coarse = masks[:, :, :, 50:198].unflatten(3, (37, 4))
    assert torch.equal(coarse, coarse[:, :, :, :, :1].expand_as(coarse))  # constant within each band
    assert torch.equal(masks[:, :, :, 198:], masks[:, :, :, 198:199].expand(-1, -1, -1, 3, -1))  # the short last band
    assert float((masks[:, :, :, 198] - masks[:, :, :, 197]).abs().max()) > 1e-4  # ... which is a band of its own
    assert float((masks[:, :, :, 51:54] - masks[:, :, :, 50:51]).abs().max()) == 0  # bins 50-53: the first band
    assert float((masks[:, :, :, 54] - masks[:, :, :, 53]).abs().max()) > 1e-4
    assert float((masks[:, :, :, 1:50] - masks[:, :, :, :49]).abs().max()) > 1e-4  # below the edge: a value per bin
    if mask == "softmax":
        assert torch.allclose(masks.sum(1), torch.ones(()), atol=1e-5)


def test_coarse_mask_gradients_reach_every_band():
    model = RNNSeparator(nb_bins=201, max_bin=201, nb_channels=1, nb_targets=2, hidden_size=16, nb_layers=1,
                         sample_rate=8000, coarse_above=1000, coarse_width=4)
    masks = model(torch.rand(2, 1, 201, 9))
    (masks[:, 0] * torch.linspace(0.5, 1, 201)[:, None]).sum().backward()  # weighted: a plain sum of softmax masks is flat
    grad = model.decoder[-2].weight.grad.reshape(2, 1, model.bands.nb_values, -1)
    assert bool((grad[0].abs().sum(-1) > 0).all())  # every fine and coarse value of the first target learns


@pytest.mark.parametrize("kwargs, message", [
    ({"coarse_above": 1000, "coarse_width": 0}, "model.coarse_width"),
    ({"coarse_above": 5000, "coarse_width": 4, "sample_rate": 8000}, r"model.coarse_above must be in \(0, 4000"),
    ({"coarse_above": 1000, "coarse_width": 4}, "model.coarse_above is in Hz"),
])
def test_bad_coarse_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RNNSeparator(**{"nb_bins": 201, "max_bin": 201, "nb_channels": 2, "nb_targets": 2} | kwargs)


@pytest.mark.parametrize("kwargs, key", [({"cell": "rnn"}, "model.cell"), ({"mask": "tanh"}, "model.mask"),
                                         ({"hidden_size": 15}, "model.hidden_size")])
def test_bad_model_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        RNNSeparator(**{"nb_bins": 33, "max_bin": 33, "nb_channels": 2, "nb_targets": 2} | kwargs)


@pytest.mark.parametrize("loss", ["mse", "psa", "l1", "sdr"])
def test_a_few_steps_lower_each_loss(tmp_path, compose_train, loss):
    """Gradients reach the network through the system's own training step, for every loss domain."""
    cfg = compose_train(["experiment=smoke", f"loss={loss}", "model.dropout=0"], tmp_path)
    torch.manual_seed(0)
    system = build_system(cfg, ["vocals", "accompaniment"], nb_channels=2, residual=False)
    t = torch.arange(4000) / 8000
    vocals = torch.sin(2 * torch.pi * 440 * t)[None].repeat(2, 1) * (t > 0.25)
    rest = mixture(1, 2, 4000, seed=3)[0]
    batch = (torch.stack([vocals + rest] * 2), torch.stack([torch.stack([vocals, rest])] * 2))
    system.model.set_input_stats(system.spectrogram(batch[0]).abs())
    optimizer = torch.optim.Adam(system.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss_value, _ = system._step(batch)
        loss_value.backward()
        optimizer.step()
        losses.append(loss_value.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0])


@pytest.mark.parametrize("mask", ["softmax", "sigmoid", "relu"])
def test_spectrogram_loss_equals_the_loss_of_the_masked_mixture(configs, mask):
    """The training step scores mask * |X| (no complex product): the same value and gradients as
    |mask * X|, the magnitude of the masked mixture that separation produces."""
    cfg = OmegaConf.merge(configs["blstm"], {"model": {"mask": mask, "dropout": 0.0}})  # the fixture stays as it is
    system = build_system(cfg, SOURCES, nb_channels=2, residual=False).eval()
    batch = (mixture(2, 2, 8000, seed=4), mixture(2, 8, 8000, seed=5).view(2, 4, 2, 8000))
    loss, _ = system._step(batch)
    (grad,) = torch.autograd.grad(loss, system.model.encoder[0].weight)
    spec = system.spectrogram(batch[0])
    reference = system.loss((system.model(spec.abs()) * spec.unsqueeze(1)).abs(), system.spectrogram(batch[1]).abs())
    (reference_grad,) = torch.autograd.grad(reference, system.model.encoder[0].weight)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-9)


def test_phase_sensitive_loss_is_the_complex_error_of_the_masked_mixture(configs):
    """loss=psa scores mask * |X| against the sources projected on the mixture phase: up to a
    constant of the data, the squared complex error |mask * X - S|^2, with the same gradients.
    The constant is not negligible on these signals, so the target really differs from |S|."""
    cfg = OmegaConf.merge(configs["blstm"], {"model": {"dropout": 0.0}})
    with open_dict(cfg):
        cfg.loss = OmegaConf.load(CONF_DIR / "loss" / "psa.yaml")
    system = build_system(cfg, SOURCES, nb_channels=2, residual=False).eval()
    batch = (mixture(2, 2, 8000, seed=4), mixture(2, 8, 8000, seed=5).view(2, 4, 2, 8000))
    loss, _ = system._step(batch)
    (grad,) = torch.autograd.grad(loss, system.model.encoder[0].weight)
    spec, target_specs = system.spectrogram(batch[0]), system.spectrogram(batch[1])
    error = (system.model(spec.abs()) * spec.unsqueeze(1) - target_specs).abs().square().mean()
    (error_grad,) = torch.autograd.grad(error, system.model.encoder[0].weight)
    projection = (target_specs * spec.unsqueeze(1).conj()).real / spec.unsqueeze(1).abs()
    constant = (target_specs.abs().square() - projection.square()).mean()
    assert constant > 0.1 * error  # the sources' phases differ from the mixture's: the targets differ
    torch.testing.assert_close(loss + constant, error, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad, error_grad, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("loss", ["mse", "l1", "sdr"])
def test_loss_weights_make_a_weighted_mean_over_sources(configs, loss):
    """loss.weights={other: 3}: the loss is the weighted mean of the per-source losses, in the
    system's target order (a target not named weighs 1); without weights, the plain mean."""
    cfg = OmegaConf.merge(configs["blstm"], {"model": {"dropout": 0.0}})
    with open_dict(cfg):
        cfg.loss = OmegaConf.load(CONF_DIR / "loss" / f"{loss}.yaml")
    plain = build_system(cfg, SOURCES, nb_channels=2, residual=False).eval()
    cfg.loss.weights = {"other": 3}
    weighted = build_system(cfg, SOURCES, nb_channels=2, residual=False).eval()
    weighted.load_state_dict(plain.state_dict())
    batch = (mixture(2, 2, 8000, seed=4), mixture(2, 8, 8000, seed=5).view(2, 4, 2, 8000))
    with torch.no_grad():
        plain_loss, estimates = plain._step(batch, waveforms=True)
        weighted_loss, _ = weighted._step(batch)
        if plain.loss.domain == "spectrogram":
            spec = plain.spectrogram(batch[0])
            estimate, target = plain.model(spec.abs()) * spec.abs().unsqueeze(1), plain.spectrogram(batch[1]).abs()
        else:
            estimate, target = estimates, batch[1]
        per_source = torch.stack([plain.loss(estimate[:, j:j + 1], target[:, j:j + 1]) for j in range(len(SOURCES))])
    assert SOURCES[-1] == "other"
    torch.testing.assert_close(plain_loss, per_source.mean(), rtol=1e-5, atol=1e-7)
    expected = (per_source * torch.tensor([1.0, 1.0, 1.0, 3.0])).sum() / 6
    torch.testing.assert_close(weighted_loss, expected, rtol=1e-5, atol=1e-7)
    assert not torch.isclose(weighted_loss, plain_loss)


def test_loss_weights_name_an_unknown_target(configs):
    cfg = OmegaConf.merge(configs["blstm"], {"loss": {"weights": {"guitar": 2}}})
    with pytest.raises(ValueError, match=r"loss.weights: guitar not among the targets"):
        build_system(cfg, SOURCES, nb_channels=2, residual=False)
    cfg = OmegaConf.merge(configs["blstm"], {"loss": {"weights": {"other": -1}}})
    with pytest.raises(ValueError, match=r"loss.weights.other: a weight must be a number >= 0"):
        build_system(cfg, SOURCES, nb_channels=2, residual=False)
