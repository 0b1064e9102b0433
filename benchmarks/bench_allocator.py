"""What keeping freed memory in the process (``keep_freed_memory``, msslab.allocator) buys a training step.

Times training steps (forward, backward, Adam; one torch thread) in fresh processes, once
with glibc's default malloc settings and once after ``keep_freed_memory()``, and prints the
process CPU time per step (user + system: the clock of ``budget.clock=cpu`` and of
bench_peer.py), the share of it spent in the kernel, and the ratio. Cases: msslab's
``experiment=fullband`` step (44.1 kHz, 4 x 3 s), the default synthetic recipe, and with
``--umx`` (``pip install -e ".[peer]"``) one Open-Unmix target model at the sizes
bench_peer.py scales it to (width 256, 8 x 3 s, n_fft 4096 / hop 1024).

    python benchmarks/bench_allocator.py [--steps 20] [--umx]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "msslab experiment=fullband": ["experiment=fullband"],
    "msslab default (synthetic)": [],
}
UMX = "Open-Unmix, one target (256, 8 x 3 s)"


def msslab_step(overrides: list[str]):
    import torch

    from bench_model import compose_cfg
    from msslab.system import build_system

    cfg = compose_cfg(overrides)
    rate, samples = cfg.data.sample_rate, int(cfg.data.chunk_seconds * cfg.data.sample_rate)
    targets = ["vocals", "drums", "bass", "other"]
    system = build_system(cfg, targets, 2, residual=False).train()
    generator = torch.Generator().manual_seed(0)
    sources = torch.randn(cfg.data.batch_size, len(targets), 2, samples, generator=generator) * 0.05
    batch = (sources.sum(1), sources)
    optimizer = torch.optim.Adam(system.parameters())

    def step():
        loss, _ = system._step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, f"{rate} Hz, {cfg.data.batch_size} x {cfg.data.chunk_seconds:g} s"


def umx_step():
    import torch
    from openunmix.model import OpenUnmix
    from openunmix.transforms import ComplexNorm, make_filterbanks
    from openunmix.utils import bandwidth_to_max_bin

    rate, n_fft, batch, seconds = 44100, 4096, 8, 3.0
    stft, _ = make_filterbanks(n_fft=n_fft, n_hop=1024, center=True, sample_rate=rate)
    encoder = torch.nn.Sequential(stft, ComplexNorm(mono=False))
    model = OpenUnmix(nb_bins=n_fft // 2 + 1, nb_channels=2, hidden_size=256, nb_layers=3, max_bin=int(bandwidth_to_max_bin(rate, n_fft, 16000))).train()
    generator = torch.Generator().manual_seed(0)
    mixture = torch.randn(batch, 2, int(seconds * rate), generator=generator) * 0.1
    target = torch.randn(batch, 2, int(seconds * rate), generator=generator) * 0.05
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = torch.nn.functional.mse_loss(model(encoder(mixture)), encoder(target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, f"{rate} Hz, {batch} x {seconds:g} s"


def child(case: str, keep: bool, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    if keep:
        from msslab.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("keep_freed_memory() did not take: not glibc?")
    step, shape = umx_step() if case == UMX else msslab_step(CASES[case])
    for _ in range(2):  # warm-up: kernels, Adam's state, the heap
        step()
    start_cpu, start_wall, start_sys = time.process_time(), time.perf_counter(), os.times().system
    for _ in range(steps):
        step()
    cpu = (time.process_time() - start_cpu) / steps
    return {"cpu": cpu, "wall": (time.perf_counter() - start_wall) / steps,
            "system": (os.times().system - start_sys) / steps, "shape": shape}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--umx", action="store_true", help="also time an Open-Unmix step (needs the peer extra)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, bool(args.keep), args.steps)))
        return

    from machine import describe

    cases = [*CASES, *([UMX] if args.umx else [])]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    print(f"{describe()}; {args.steps} training steps per process after 2 warm-up steps, one torch thread")
    print(f"{'case':40s} {'batch':>20s} {'glibc default':>22s} {'keep_freed_memory':>22s} {'CPU time ratio':>15s}")
    for case in cases:
        row = {}
        for keep in (0, 1):
            proc = subprocess.run([sys.executable, __file__, "--child", case, "--keep", str(keep), "--steps", str(args.steps)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{case}: {proc.stderr.strip().splitlines()[-1]}")
            row[keep] = json.loads(proc.stdout.strip().splitlines()[-1])
        cells = [f"{r['cpu']:.3f} CPU-s ({r['system'] / r['cpu']:4.0%} sys)" for r in (row[0], row[1])]
        print(f"{case:40s} {row[0]['shape']:>20s} {cells[0]:>22s} {cells[1]:>22s} {row[0]['cpu'] / row[1]['cpu']:14.2f}x", flush=True)


if __name__ == "__main__":
    main()
