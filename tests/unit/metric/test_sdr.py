"""The fast validation metrics (msslab.metric.sdr) and what they drive: training that beats the baselines.

Validation SDR picks the best checkpoint, stops training early and prunes search trials,
so its values are checked against signals of known SNR; the end-to-end test checks that a
short training run separates better than the two baselines that need no training.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from msslab.metric.sdr import FAST_METRICS, sdr, si_sdr


def at_snr(reference: torch.Tensor, snr_db: float, orthogonal: bool = False, seed: int = 0) -> torch.Tensor:
    """``reference`` plus noise of ``snr_db`` dB below it per channel (orthogonal to it and zero-mean if asked)."""
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = reference
    if orthogonal:  # SI-SDR's signal is the zero-mean reference
        ref = reference - reference.mean(-1, keepdim=True)
        noise = noise - noise.mean(-1, keepdim=True)
        noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref
    scale = (ref.pow(2).sum(-1, keepdim=True) / noise.pow(2).sum(-1, keepdim=True) / 10 ** (snr_db / 10)).sqrt()
    return reference + scale * noise


@pytest.fixture
def reference():
    return torch.randn(2, 8000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 12.5, 40.0])
def test_sdr_of_a_known_snr(reference, snr_db):
    assert sdr(at_snr(reference, snr_db), reference).item() == pytest.approx(snr_db, abs=1e-6)
    assert si_sdr(at_snr(reference, snr_db, orthogonal=True), reference).item() == pytest.approx(snr_db, abs=1e-6)


def test_sdr_pools_channels_si_sdr_averages_them(reference):
    reference = reference.clone()
    reference[1] *= 3  # the second channel 9.5 dB louder
    estimate = torch.stack([at_snr(reference[:1], 10.0, True)[0], at_snr(reference[1:], 20.0, True, seed=1)[0]])
    assert si_sdr(estimate, reference).item() == pytest.approx(15.0, abs=1e-6)  # (10 + 20) / 2
    error = (reference - estimate).pow(2).sum()
    assert sdr(estimate, reference).item() == pytest.approx(10 * math.log10(reference.pow(2).sum() / error), abs=1e-6)
    # energy-weighted: closer to the louder channel's 20 dB than the mean of the two
    assert 15.0 < sdr(estimate, reference).item() < 20.0


def test_scale_and_offset(reference):
    estimate = at_snr(reference, 8.0, orthogonal=True)
    for gain in [0.01, 0.5, 3.0, 100.0]:  # SI-SDR ignores the estimate's gain and DC offset
        assert si_sdr(gain * estimate + 0.3, reference).item() == pytest.approx(8.0, abs=1e-6)
    # Plain SDR counts a gain error: half the reference is 6.02 dB, twice it 0 dB.
    assert sdr(0.5 * reference, reference).item() == pytest.approx(20 * math.log10(2), abs=1e-6)
    assert sdr(2 * reference, reference).item() == pytest.approx(0.0, abs=1e-6)
    assert sdr(torch.zeros_like(reference), reference).item() == pytest.approx(0.0, abs=1e-6)
    assert sdr(reference, reference).item() > 100  # exact: limited only by eps, finite


def test_batched_shapes_match_one_by_one_and_gradients_are_finite():
    targets = torch.randn(3, 4, 2, 1000, generator=torch.Generator().manual_seed(2))  # (batch, sources, C, T)
    estimates = (targets + 0.3 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(3))).requires_grad_()
    for name, metric in FAST_METRICS.items():
        scores = metric(estimates, targets)
        assert scores.shape == (3, 4), name
        for b in range(3):
            for s in range(4):
                assert scores[b, s].item() == pytest.approx(metric(estimates[b, s], targets[b, s]).item(), abs=1e-4)
        (grad,) = torch.autograd.grad(scores.sum(), estimates)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert set(FAST_METRICS) == {"sdr", "si_sdr"}


# ------------------------------------------------------------------ end to end


def baselines(run_dir) -> dict[str, dict[str, float]]:
    """Per target, the median over the run's test tracks of the median SDR of two estimates that need no
    training: the mixture itself, and the mixture split equally between the targets (what the softmax
    masks of an untrained model give, to within a few tenths of a dB)."""
    from msslab.metric.bsseval import score_track

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    dm = instantiate(cfg.data)
    dm.setup("test")
    scores = {"mixture": [], "split": []}
    for index in range(len(dm.test_tracks)):
        name, mixture, targets = dm.test_track(index)
        references = targets.numpy().transpose(0, 2, 1)
        whole = np.repeat(mixture.numpy().T[None], len(dm.targets), axis=0)
        for label, estimates in (("mixture", whole), ("split", whole / len(dm.targets))):
            medians = score_track(name, dm.targets, references, estimates, dm.sample_rate,
                                  backend=cfg.metric.backend)["medians"]
            scores[label].append({t: medians[t]["SDR"] for t in dm.targets})
    return {label: {t: float(np.median([s[t] for s in per_track])) for t in dm.targets}
            for label, per_track in scores.items()}


@pytest.mark.slow
@pytest.mark.integration
def test_training_beats_the_untrained_baselines(cli, tmp_path):
    """A short run of the smoke preset (64 steps at lr 0.005, about 35 s on 2 CPU cores) separates every
    target better than the mixture and, on average over targets, better than the equal split by 0.75 dB.

    The session's smoke run (8 steps) does not fit: it is still at the equal split's level (measured:
    within 0.1 dB on one of its two test tracks), so beating the mixture would show only the mask scale."""
    run_dir = tmp_path / "run"
    result = cli.run("msslab-train", "experiment=smoke", "trainer.max_epochs=8", "trainer.limit_train_batches=8",
                     "optimizer.lr=0.005", "logger=none", f"hydra.run.dir={run_dir}", timeout=300)
    assert result.returncode == 0, result.tail()
    trained = {t: v["SDR"] for t, v in json.loads((run_dir / "results.json").read_text())["sources"].items()}
    base = baselines(run_dir)
    for target, value in trained.items():
        assert value > base["mixture"][target] + 3.0, (target, value, base)
    gain = np.mean([trained[t] - base["split"][t] for t in trained])
    assert gain > 0.75, (trained, base)
