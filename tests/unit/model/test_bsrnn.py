"""The band-split RNN (model=bsrnn), complex masks in the system, and loss=bsrnn."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from msslab import CONFIG_DIR
from msslab.errors import MsslabError
from msslab.model import BandSplitRNN
from msslab.model.bsrnn import band_bins
from msslab.model.spectrogram import magnitude
from msslab.separation import Separator
from msslab.system import SeparationSystem, build_system

CONF_DIR = CONFIG_DIR
SOURCES = ["vocals", "drums", "bass", "other"]
# plain masks (the main job's default filters): these tests check what the masks give
TINY = ["model.hidden_size=8", "model.nb_layers=1", "model.rnn_size=8", "model.mask_hidden=8",
        "separation.wiener_iterations=0"]


def presets() -> dict:
    """The band presets as shipped in conf/model/bsrnn.yaml (interpolations resolved)."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "bsrnn.yaml").band_presets, resolve=True)


@pytest.fixture
def system_for(compose_train, tmp_path):
    """``system_for(targets, channels, *overrides)``: a tiny BSRNN system built as msslab-train builds it."""
    def build(targets=SOURCES, channels=2, *overrides, seed=0):
        cfg = compose_train(["model=bsrnn", "loss=bsrnn", *TINY, *overrides], tmp_path)
        torch.manual_seed(seed)
        return build_system(cfg, targets, nb_channels=channels, residual=False)
    return build


def spectrum(batch=2, channels=2, bins=129, frames=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, bins, frames, dtype=torch.complex64, generator=g)


# ------------------------------------------------------------------ band layout

@pytest.mark.parametrize("sample_rate, n_fft", [(8000, 256), (16000, 512), (22050, 64), (44100, 2048),
                                                (44100, 4096), (48000, 1024), (44100, 16)])
@pytest.mark.parametrize("bands", ["vocals", "other", "bass", "drums", [150.5, 700, 3000, 12000, 30000]])
def test_bands_cover_every_bin_exactly_once(sample_rate, n_fft, bands):
    nb_bins = n_fft // 2 + 1
    bounds = band_bins(bands, sample_rate, nb_bins, presets())
    assert bounds[0] == 0 and bounds[-1] == nb_bins
    assert all(b > a for a, b in zip(bounds, bounds[1:]))  # no empty band, no overlap
    covered = torch.cat([torch.arange(a, b) for a, b in zip(bounds, bounds[1:])])
    assert torch.equal(covered, torch.arange(nb_bins))  # every bin once, in order


def test_vocals_preset_is_the_papers_layout():
    bounds = band_bins("vocals", 44100, 1025, presets())
    assert len(bounds) - 1 == 41  # 10 x 100 Hz, 12 x 250 Hz, 8 x 500 Hz, 8 x 1 kHz, 2 x 2 kHz, the rest
    hz = 44100 / 2048
    assert [round(b * hz, -1) for b in bounds[1:4]] == [110.0, 190.0, 300.0]  # nearest bins to 100, 200, 300 Hz
    assert abs(bounds[-2] * hz - 20000) < hz  # the last band: 20 kHz to Nyquist
    bass = band_bins("bass", 44100, 1025, presets())
    assert bass[1] < bounds[1] and len(bass) > len(bounds)  # finer low end


def test_band_list_from_the_command_line(system_for):
    system = system_for(SOURCES[:1], 1, "model.bands=[300,1000,3000]", "data.sample_rate=16000")
    assert system.model.bounds == [0, 10, 32, 96, 257]  # 31.25 Hz bins: 300 Hz -> bin 10, ..., to Nyquist
    system = system_for(SOURCES[:1], 1, "model.bands=bass", "data.sample_rate=16000")
    assert system.model.bounds[:3] == [0, 2, 3]  # 50 Hz bands (1.6 bins each) at the bottom


@pytest.mark.parametrize("bands, message", [("piano", "unknown preset 'piano'"), ([500, 200], "increasing"),
                                            ([0, 200], "increasing positive")])
def test_bad_band_layout_names_the_key(bands, message):
    with pytest.raises(ValueError, match="model.bands") as error:
        BandSplitRNN(257, nb_channels=1, nb_targets=1, sample_rate=16000, bands=bands, band_presets=presets())
    assert message in str(error.value)


# ------------------------------------------------------------------ the network

@pytest.mark.parametrize("nb_targets", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("targets", ["shared", "separate"])
def test_output_shapes(system_for, nb_targets, channels, targets):
    system = system_for(SOURCES[:nb_targets], channels, f"model.targets={targets}").eval()
    x = torch.randn(2, channels, 4001) * 0.1  # not a whole number of hops
    with torch.no_grad():
        spec = system.spectrogram(x)
        masks = system.model(spec)
        estimates = system(x)
    assert masks.shape == (2, nb_targets, channels, spec.shape[-2], spec.shape[-1]) and masks.is_complex()
    assert estimates.shape == (2, nb_targets, channels, 4001) and torch.isfinite(estimates).all()
    assert len(system.model.cores) == (1 if targets == "shared" else nb_targets)


def test_separate_targets_are_independent_networks():
    kwargs = dict(nb_bins=129, nb_channels=1, sample_rate=8000, band_presets=presets(), hidden_size=8, nb_layers=1,
                  rnn_size=8, mask_hidden=8)
    shared, separate = BandSplitRNN(nb_targets=3, **kwargs), BandSplitRNN(nb_targets=3, targets="separate", **kwargs)
    core = sum(p.numel() for p in BandSplitRNN(nb_targets=1, **kwargs).parameters())
    assert sum(p.numel() for p in separate.parameters()) == 3 * core
    assert sum(p.numel() for p in shared.parameters()) < 3 * core


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_causal_masks_ignore_later_frames(cell):
    torch.manual_seed(0)
    model = BandSplitRNN(129, nb_channels=2, nb_targets=2, sample_rate=8000, band_presets=presets(), hidden_size=8,
                         nb_layers=2, cell=cell, bidirectional=False).eval()
    assert model.causal
    spec, t = spectrum(), 5
    changed = spec.clone()
    changed[..., t + 1:] = spectrum(seed=1)[..., t + 1:]
    with torch.no_grad():
        a, b = model(spec), model(changed)
    torch.testing.assert_close(a[..., : t + 1], b[..., : t + 1], rtol=0, atol=0)
    assert not torch.allclose(a[..., t + 1:], b[..., t + 1:])
    # the bidirectional variant does look ahead (so the check above can fail)
    torch.manual_seed(0)
    offline = BandSplitRNN(129, nb_channels=2, nb_targets=2, sample_rate=8000, band_presets=presets(), hidden_size=8,
                           nb_layers=2, cell=cell, bidirectional=True).eval()
    assert not offline.causal
    with torch.no_grad():
        assert not torch.allclose(offline(spec)[..., : t + 1], offline(changed)[..., : t + 1])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("targets", ["shared", "separate"])
def test_step_in_pieces_equals_one_call(cell, targets):
    torch.manual_seed(0)
    model = BandSplitRNN(129, nb_channels=2, nb_targets=2, sample_rate=8000, band_presets=presets(), hidden_size=8,
                         nb_layers=2, cell=cell, bidirectional=False, targets=targets).eval()
    spec = spectrum(frames=11)
    with torch.no_grad():
        whole = model(spec)
        pieces, state = [], None
        for a, b in [(0, 1), (1, 5), (5, 6), (6, 11)]:
            masks, state = model.step(spec[..., a:b], state)
            pieces.append(masks)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, rtol=0, atol=1e-5)
    bidirectional = BandSplitRNN(129, nb_channels=2, nb_targets=2, sample_rate=8000, band_presets=presets(),
                                 hidden_size=8, nb_layers=1)
    with pytest.raises(ValueError, match="bidirectional"):
        bidirectional.step(spec, state=[[None]])


# ------------------------------------------------------------------ complex masks in the system

class ConstantMask(nn.Module):
    """A complex-mask model whose every mask is ``value``."""

    mask_kind = "complex"

    def __init__(self, value: complex, nb_targets: int):
        super().__init__()
        self.value, self.nb_targets = value, nb_targets
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, spec):
        assert spec.is_complex(), "a complex-mask model gets the complex spectrogram"
        ones = torch.ones_like(spec).unsqueeze(1).expand(-1, self.nb_targets, -1, -1, -1)
        return ones * self.value + self.weight


def constant_system(value, nb_targets=2):
    from msslab.model import Spectrogram
    from msslab.loss import ComplexL1

    return SeparationSystem(Separator(ConstantMask(value, nb_targets), Spectrogram(n_fft=256, hop_length=64, sample_rate=8000),
                                      SOURCES[:nb_targets], wiener_iterations=0), loss=ComplexL1())


def test_complex_masks_of_ones_return_the_mixture():
    system = constant_system(1.0)
    mixture = torch.randn(2, 2, 3000) * 0.1
    estimates = system(mixture)
    for j in range(2):
        torch.testing.assert_close(estimates[:, j], mixture, rtol=0, atol=1e-5)


def test_complex_masks_keep_their_imaginary_part():
    # A mask of 1j rotates every bin by 90 degrees: the estimate is istft(1j X), not 0 (the real part).
    system = constant_system(1j)
    mixture = torch.randn(1, 2, 3000) * 0.1
    spec = system.spectrogram(mixture)
    expected = system.spectrogram.inverse(1j * spec, length=3000)
    estimates = system(mixture)
    assert expected.abs().max() > 0.01
    torch.testing.assert_close(estimates[:, 0], expected, rtol=0, atol=1e-5)
    loss, step_estimates = system._step((mixture, torch.stack([mixture, mixture], 1)), waveforms=True)
    torch.testing.assert_close(step_estimates[:, 1], expected, rtol=0, atol=1e-5)


def test_bsrnn_through_forward_wiener_and_bf16(system_for):
    system = system_for(SOURCES, 2).eval()
    mixture = torch.randn(1, 2, 4000) * 0.1
    with torch.no_grad():
        spec = system.spectrogram(mixture)
        expected = system.spectrogram.inverse(system.model(spec) * spec.unsqueeze(1), length=4000)
        torch.testing.assert_close(system(mixture), expected, rtol=0, atol=1e-6)
        wiener = system.separator.replace(wiener_iterations=1)(mixture)  # the Wiener filter takes the estimates' magnitudes
        bf16 = system(mixture, autocast=True)
    assert wiener.shape == expected.shape and torch.isfinite(wiener).all()
    assert not torch.allclose(wiener, expected)
    assert bf16.dtype == mixture.dtype and (bf16 - expected).abs().max() < 0.1 * expected.abs().max()


def test_bsrnn_loss_is_the_papers(system_for):
    system = system_for(SOURCES[:2], 1)
    targets = torch.randn(2, 2, 1, 3000) * 0.1
    mixture = targets.sum(1)
    loss, estimates = system._step((mixture, targets))
    with torch.no_grad():
        spec = system.spectrogram(mixture)
        est_specs = system.model(spec) * spec.unsqueeze(1)
        true_specs = system.spectrogram(targets)
        per_source = [(est_specs[:, j] - true_specs[:, j]).real.abs().mean()
                      + (est_specs[:, j] - true_specs[:, j]).imag.abs().mean()
                      + (estimates[:, j] - targets[:, j]).abs().mean() for j in range(2)]
    torch.testing.assert_close(loss.detach(), torch.stack(per_source).mean(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("loss", ["mse", "psa"])
def test_magnitude_loss_with_complex_masks_is_refused(compose_train, tmp_path, loss):
    cfg = compose_train(["model=bsrnn", f"loss={loss}", *TINY], tmp_path)
    with pytest.raises(MsslabError) as error:
        build_system(cfg, SOURCES, nb_channels=2, residual=False)
    message = str(error.value)
    assert "MagnitudeMSE" in message and "BandSplitRNN" in message and "\n" not in message


@pytest.mark.parametrize("loss", ["mse", "psa", "l1", "sdr"])
def test_magnitude_models_train_on_the_same_numbers(compose_train, tmp_path, loss):
    # The step of a magnitude-mask model is the one of before complex masks: loss = f(mask x |X|, |S|)
    # for the spectrogram losses, f(istft(mask x X), s) for the waveform ones.
    cfg = compose_train(["model=blstm", f"loss={loss}"], tmp_path)
    torch.manual_seed(0)
    system = build_system(cfg, SOURCES, nb_channels=2, residual=False).eval()  # eval: no dropout draws
    targets = torch.randn(2, 4, 2, 8000, generator=torch.Generator().manual_seed(1)) * 0.1
    mixture = targets.sum(1)
    loss_value, _ = system._step((mixture, targets))
    spec = system.spectrogram(mixture)
    masks = system.model(magnitude(spec))
    assert not masks.is_complex()
    if system.loss.domain == "spectrogram":
        true = system.spectrogram(targets)
        if cfg.loss.get("phase_sensitive"):
            expected = system.loss(masks * spec.abs().unsqueeze(1),
                                   (true * spec.unsqueeze(1).conj()).real / spec.abs().unsqueeze(1).clamp_min(1e-8))
        else:
            expected = system.loss(masks * magnitude(spec).unsqueeze(1), magnitude(true))
    else:
        expected = system.loss(system.spectrogram.inverse(masks * spec.unsqueeze(1), length=8000), targets)
    torch.testing.assert_close(loss_value, expected, rtol=1e-5, atol=1e-7)


def test_bsrnn_loss_trains_a_magnitude_model(compose_train, tmp_path):
    cfg = compose_train(["model=blstm", "loss=bsrnn", "model.hidden_size=16", "model.nb_layers=1"], tmp_path)
    system = build_system(cfg, SOURCES[:2], nb_channels=1, residual=False)
    targets = torch.randn(1, 2, 1, 4000) * 0.1
    loss, _ = system._step((targets.sum(1), targets))
    loss.backward()
    assert torch.isfinite(loss) and system.model.encoder[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ training

def test_tiny_bsrnn_loss_falls_on_smoke_data(compose_train, tmp_path):
    cfg = compose_train(["experiment=smoke", "model=bsrnn", "loss=bsrnn", *TINY, "data.num_workers=0"], tmp_path)
    datamodule = instantiate(cfg.data, augmentation=None)
    datamodule.setup("fit")
    torch.manual_seed(0)
    system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual=False)
    # two chunks of 1 s: a second of CPU for the whole loop
    batch = [x[..., :8000] for x in next(iter(torch.utils.data.DataLoader(datamodule.train_set, batch_size=2)))]
    optimizer = torch.optim.Adam(system.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, _ = system._step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_msslab_train_bsrnn_end_to_end(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli.run("msslab-train", "experiment=smoke", "model=bsrnn", "loss=bsrnn", *TINY, "logger=none",
                     "trainer.max_epochs=1", "data.test_tracks.nb_tracks=1", "trainer.enable_progress_bar=false",
                     f"hydra.run.dir={run_dir}", timeout=300)
    assert result.returncode == 0, result.tail()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["choices"]["model"] == "bsrnn"
    assert all(abs(results["sources"][s]["SDR"]) < 100 for s in results["sources"])


@pytest.mark.parametrize("preset, parameters, nb_bands", [("bsrnn", 48_761_768, 41), ("bsrnn_cpu", 3_323_200, 20)])
def test_recipes_build_the_stated_networks(compose_train, tmp_path, preset, parameters, nb_bands):
    """experiment=bsrnn is the paper's size and front end (one network for all targets); bsrnn_cpu its small
    CPU variant (hop 1024, 20 bands, one network per target)."""
    cfg = compose_train([f"experiment={preset}"], tmp_path)
    assert cfg.data.sample_rate == 44100 and cfg.stft.n_fft == 2048 and cfg.data.chunk_seconds == 3.0
    assert cfg.stft.hop_length == (512 if preset == "bsrnn" else 1024)
    assert cfg.loss._target_ == "msslab.loss.ComplexL1"
    assert sorted(cfg.augmentation.keys() - {"placement"}) == ["channel_swap", "gain", "remix"]
    spectrogram = instantiate(cfg.stft)
    model = instantiate(cfg.model, nb_bins=spectrogram.nb_bins, max_bin=spectrogram.max_bin, nb_channels=2,
                        nb_targets=4, residual=False, sample_rate=spectrogram.sample_rate)
    assert model.nb_bands == nb_bands and len(model.cores) == (1 if preset == "bsrnn" else 4)
    assert sum(p.numel() for p in model.parameters()) == parameters
