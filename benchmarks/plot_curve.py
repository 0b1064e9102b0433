"""Plot SDR against training compute from bench_peer.py runs made with ``--snapshots``.

Each ``--run LABEL=FOLDER[,FOLDER...]`` is one recipe: its folders (one per seed) give the
msslab side's SDR at every snapshot mark (``results.json``: ``results.msslab.snapshots``).
One panel per source and one for the mean of the sources; a line per recipe through the
means over the seeds that reached each mark, a dot per seed. ``--umx FOLDER[,...]`` adds
Open-Unmix's result at its budget (the mean and a dot per seed). Prints the table it plots.

    python benchmarks/plot_curve.py --run bsrnn_cpu=runs/b101,runs/b102 --run fullband=runs/f101,runs/f102 \\
        --umx runs/u101,runs/u102 --out sdr_vs_cpu_minutes.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SOURCES = ["vocals", "drums", "bass", "other"]
PANELS = [*SOURCES, "mean"]


def read(folder: str) -> dict:
    path = Path(folder) / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {path}: {type(exc).__name__}: {exc}") from None


def sdr(sources: dict) -> dict[str, float]:
    values = {s: float(sources[s]["SDR"]) for s in SOURCES}
    return values | {"mean": float(np.mean(list(values.values())))}


def curve(folders: list[str]) -> dict[float, list[dict[str, float]]]:
    """``{minutes: [per-seed SDRs]}`` over the snapshot marks of the msslab side of ``folders``."""
    points: dict[float, list[dict[str, float]]] = {}
    for folder in folders:
        snapshots = read(folder).get("results", {}).get("msslab", {}).get("snapshots") or {}
        if not snapshots:
            raise SystemExit(f"error: {folder}/results.json: no msslab snapshots (run bench_peer.py with --snapshots)")
        for minutes, entry in snapshots.items():
            points.setdefault(float(minutes), []).append(sdr(entry["sources"]))
    return dict(sorted(points.items()))


def umx_points(folders: list[str]) -> tuple[float, list[dict[str, float]]]:
    budgets, rows = set(), []
    for folder in folders:
        data = read(folder)
        if "umx" not in data.get("results", {}):
            raise SystemExit(f"error: {folder}/results.json: no Open-Unmix (umx) results")
        budgets.add(float(data["args"]["budget_minutes"]))
        rows.append(sdr(data["results"]["umx"]["sources"]))
    if len(budgets) != 1:
        raise SystemExit(f"error: --umx folders ran different budgets: {sorted(budgets)}")
    return budgets.pop(), rows


def cells(rows: list[dict[str, float]]) -> str:
    """The table's cells of one mark: the mean over the seeds of every panel, ± their sample standard
    deviation (n - 1) when several."""
    return " | ".join(f"{np.mean([r[p] for r in rows]):.2f}"
                      + (f" ± {np.std([r[p] for r in rows], ddof=1):.2f}" if len(rows) > 1 else "") for p in PANELS)


def label_folders(text: str) -> tuple[str, list[str]]:
    label, sep, folders = text.partition("=")
    if not sep or not label or not folders:
        raise argparse.ArgumentTypeError(f"expected LABEL=FOLDER[,FOLDER...], got {text!r}")
    return label, [f for f in folders.split(",") if f]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", type=label_folders, required=True, help="LABEL=FOLDER[,FOLDER...]")
    parser.add_argument("--umx", type=lambda t: [f for f in t.split(",") if f], default=[], help="FOLDER[,FOLDER...]")
    parser.add_argument("--title", default="SDR against training compute (CPU-minutes)")
    parser.add_argument("--out", default="sdr_vs_cpu_minutes.png")
    args = parser.parse_args()

    curves = {label: curve(folders) for label, folders in args.run}
    umx = umx_points(args.umx) if args.umx else None
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6), sharex=True)
    lines = ["| recipe | CPU-min | seeds | " + " | ".join(PANELS) + " |", "| --- | ---: | ---: |" + " ---: |" * len(PANELS)]
    for colour, (label, points) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], curves.items()):
        marks = list(points)
        for ax, panel in zip(axes, PANELS):
            values = [[seed[panel] for seed in points[m]] for m in marks]
            ax.plot(marks, [np.mean(v) for v in values], "-o", color=colour, label=label, markersize=4)
            for m, v in zip(marks, values):
                ax.plot([m] * len(v), v, ".", color=colour, alpha=0.5)
        lines += [f"| {label} | {m:g} | {len(points[m])} | {cells(points[m])} |" for m in marks]
    if umx is not None:
        budget, rows = umx
        for ax, panel in zip(axes, PANELS):
            v = [r[panel] for r in rows]
            ax.plot([budget], [np.mean(v)], "s", color="black", label="Open-Unmix (scaled)")
            ax.plot([budget] * len(v), v, ".", color="black", alpha=0.5)
        lines.append(f"| Open-Unmix (scaled) | {budget:g} | {len(rows)} | {cells(rows)} |")
    for ax, panel in zip(axes, PANELS):
        ax.set_title(panel if panel != "mean" else "mean of the four")
        ax.set_xlabel("training CPU-minutes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("median SDR (dB)")
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("\n".join(lines))
    print(f"mean ± standard deviation over seeds; written: {args.out}")


if __name__ == "__main__":
    main()
