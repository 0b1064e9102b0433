"""``trainer=ddp`` on two CPU processes (gloo): one run, one results.json, one W&B run.

The run is far below ``experiment=smoke`` (one epoch of two steps per process), with
the device placement of augmentation, so the batched stages run inside DDP too.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

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


def test_ddp_on_two_cpu_processes_writes_one_run(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli.run("msslab-train", "experiment=smoke", *DDP_CPU, "trainer.max_epochs=1",
                     "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
                     "data.targets=[vocals,accompaniment]", "data.test_tracks.nb_tracks=1", "data.test_tracks.seconds=3.0",
                     "augmentation=[gain,reverb]", "augmentation.placement=device", f"hydra.run.dir={run_dir}",
                     timeout=400)
    assert result.returncode == 0, result.tail()
    output = result.output
    assert "distributed_backend=gloo" in output and "All distributed processes registered" in output, result.tail()
    assert "Starting with 2 processes" in output or "MEMBER: 2/2" in output, result.tail()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["best_val"] is not None
    assert len(results["tracks"]) == 1  # the test set once, not once per process
    assert results["choices"]["augmentation"] == ["gain", "reverb"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
