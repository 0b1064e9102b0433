"""``trainer=ddp`` on two CPU processes (gloo): one run, one results.json, one W&B run.

The run is far below ``experiment=smoke`` (one epoch of two steps per process), with
the device placement of augmentation, so the batched stages run inside DDP too.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "trainer.sync_batchnorm=false"]


def test_each_rank_draws_other_chunks():
    from msslab.data import MSSDataModule
    from msslab.data.synthetic import SyntheticTracks

    def tracks(split, seed):
        return SyntheticTracks(nb_tracks=2, seconds=3.0, sample_rate=8000, seed=seed, split=split, cache_dir=False)

    dm = MSSDataModule(tracks("train", 1), tracks("valid", 2), tracks("test", 3), sample_rate=8000, targets=None,
                       chunk_seconds=1.0, samples_per_track=2, valid_chunk_seconds=1.0, num_workers=0, seed=0)
    items = {}
    for rank in (0, 1, 0):
        dm.trainer = SimpleNamespace(global_rank=rank)
        dm.setup("fit")
        items.setdefault(rank, []).append(dm.train_set[0][0].numpy())
    np.testing.assert_array_equal(items[0][0], items[0][1])  # a rank's draws are reproducible
    assert not np.allclose(items[0][0], items[1][0])  # ... and differ from the other rank's


def validation_median(run_dir, checkpoint) -> tuple[float, float]:
    """The run's validation score recomputed in this process from ``checkpoint``: the mean over
    targets of the median over the validation chunks, each chunk once, and with the chunks that
    a two-process DistributedSampler repeats as padding counted again."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from msslab.metric.sdr import FAST_METRICS
    from msslab.system import load_checkpoint

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    separator = load_checkpoint(checkpoint).separator.replace(wiener_iterations=0).eval()  # as validation separates
    with torch.no_grad():
        scores = torch.cat([FAST_METRICS[cfg.metric.validation](separator(m[None]), t[None])
                            for m, t in (dm.valid_set[i] for i in range(len(dm.valid_set)))])  # (chunks, S)
    padded = torch.cat([scores, scores[: (-len(scores)) % 2]])  # what the sampler hands the processes
    return (scores.median(0).values.mean().item(),  # torch's median of an even count is the lower middle
            padded.nanmedian(0).values.mean().item())


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_on_two_cpu_processes_writes_one_run(cli, tmp_path):
    run_dir = tmp_path / "run"
    # Three validation chunks on two processes: the sampler pads the second with the first chunk,
    # which (seed 2003) is the lowest accompaniment score, so counting it twice moves the median.
    result = cli.run("msslab-train", "experiment=smoke", *DDP_CPU, "trainer.max_epochs=1",
                     "+trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                     "data.targets=[vocals,accompaniment]", "data.test_tracks.nb_tracks=2", "data.test_tracks.seconds=3.0",
                     "data.valid_tracks.seconds=3.0", "data.valid_tracks.seed=2003", "data.valid_chunk_seconds=1.0",
                     "augmentation=[gain,reverb]", "augmentation.placement=device", f"hydra.run.dir={run_dir}",
                     timeout=400)
    assert result.returncode == 0, result.tail()
    output = result.output
    assert "distributed_backend=gloo" in output and "All distributed processes registered" in output, result.tail()
    assert "Starting with 2 processes" in output or "MEMBER: 2/2" in output, result.tail()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["best_val"] is not None
    # The test set once, not once per process: rank 0 alone evaluates and prints the table.
    assert len(results["tracks"]) == 2
    assert output.count("museval medians (dB) over 2 test tracks") == 1, result.tail()
    assert results["choices"]["augmentation"] == ["gain", "reverb"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    # The validation score gathered from both processes is the median over the three chunks, each once.
    once, with_padding = validation_median(run_dir, results["best_checkpoint"])
    assert abs(once - with_padding) > 1e-3  # the chunks are such that the padding would show
    assert results["best_val"] == pytest.approx(once, abs=1e-4)
