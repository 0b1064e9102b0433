"""Plot bench_peer.py runs: every run's median SDR per source, msslab beside Open-Unmix.

Each dot is one run (one seed); the bars are the means, and the dashed line over the
msslab column is Open-Unmix's mean plus 1 dB (the issue's target). Writes a PNG and
prints the means and their differences.

    python benchmarks/plot_peer.py --msslab outputs/bench_peer/ms42 outputs/bench_peer/ms43 \\
        --umx outputs/bench_peer/umx42 outputs/bench_peer/umx43 --out peer_sdr.png
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SOURCES = ["vocals", "drums", "bass", "other"]


def scores(folders: list[str], side: str, metric: str) -> np.ndarray:
    """``(runs, sources)``: the ``side``'s median ``metric`` of each run folder's results.json
    (a bench_peer folder; for msslab also an ``msslab-train``/``msslab-eval`` run folder, such as a
    bench_peer checkpoint scored again with other separation settings)."""
    rows = []
    for folder in folders:
        path = Path(folder) / "results.json"
        try:
            data = json.loads(path.read_text())
            result = data if side == "msslab" and "results" not in data else data["results"][side]
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise SystemExit(f"error: {path}: no {side} results ({type(exc).__name__}: {exc})") from None
        rows.append([result["sources"][s][metric] for s in SOURCES])
    return np.array(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--msslab", nargs="+", required=True,
                        help="bench_peer output folders with an msslab side, or msslab run folders")
    parser.add_argument("--umx", nargs="+", required=True, help="bench_peer output folders with an Open-Unmix side")
    parser.add_argument("--metric", default="SDR", choices=["SDR", "SIR", "SAR"])
    parser.add_argument("--title", default="")
    parser.add_argument("--out", default="peer_sdr.png")
    args = parser.parse_args()

    sides = {"msslab": scores(args.msslab, "msslab", args.metric), "Open-Unmix": scores(args.umx, "umx", args.metric)}
    means = {name: values.mean(0) for name, values in sides.items()}
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.36
    rng = np.random.default_rng(0)  # horizontal jitter of the dots only
    for k, (name, values) in enumerate(sides.items()):
        x = np.arange(len(SOURCES)) + (k - 0.5) * width
        ax.bar(x, means[name], width * 0.9, alpha=0.35, color=f"C{k}", label=f"{name} (mean of {len(values)} runs)")
        for j in range(len(SOURCES)):
            ax.scatter(x[j] + rng.uniform(-0.08, 0.08, len(values)), values[:, j], s=14, color=f"C{k}", zorder=3)
    for j in range(len(SOURCES)):
        target = means["Open-Unmix"][j] + 1.0
        ax.hlines(target, j - width * 0.95, j + 0.05, colors="k", linestyles="--", linewidth=1,
                  label="Open-Unmix mean + 1 dB" if j == 0 else None)
        top = max(target, sides["msslab"][:, j].max(), sides["Open-Unmix"][:, j].max())
        ax.annotate(f"{means['msslab'][j] - means['Open-Unmix'][j]:+.2f} dB", (j, top + 0.2),
                    ha="center", fontsize=9)
    ax.set_xticks(np.arange(len(SOURCES)), SOURCES)
    ax.set_ylabel(f"median {args.metric} (dB)")
    ax.set_title("\n".join(textwrap.wrap(args.title, 95)), fontsize=9)
    ax.set_ylim(0, max(values.max() for values in sides.values()) + 0.8)  # room for the labels
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120, metadata={"Software": "msslab bench_peer"})
    for name, values in sides.items():
        print(f"{name:10s} {len(values)} runs, mean {args.metric}: " + " / ".join(f"{v:.2f}" for v in means[name]))
    print("difference: " + " / ".join(f"{d:+.2f}" for d in means["msslab"] - means["Open-Unmix"]))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
