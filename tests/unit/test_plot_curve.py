"""benchmarks/plot_curve.py: the learning-curve table and figure from bench_peer snapshot runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "plot_curve.py"
SOURCES = ["vocals", "drums", "bass", "other"]


def _run_folder(root: Path, name: str, snapshots: dict[str, float], umx: float | None = None) -> str:
    folder = root / name
    folder.mkdir()
    scores = lambda base: {s: {"SDR": base + i, "SIR": 0.0} for i, s in enumerate(SOURCES)}  # noqa: E731
    results = {"msslab": {"sources": scores(0.0), "snapshots": {m: {"sources": scores(v), "global_step": 1, "epoch": 0}
                                                                for m, v in snapshots.items()}}}
    if umx is not None:
        results["umx"] = {"sources": scores(umx)}
    (folder / "results.json").write_text(json.dumps({"args": {"budget_minutes": 20.0}, "results": results}))
    return str(folder)


def test_curve_table_averages_the_seeds_at_each_mark(tmp_path):
    a = _run_folder(tmp_path, "a", {"5": 1.0, "20": 3.0}, umx=2.0)
    b = _run_folder(tmp_path, "b", {"5": 2.0, "20": 5.0}, umx=4.0)
    out = tmp_path / "curve.png"
    result = subprocess.run([sys.executable, str(SCRIPT), "--run", f"small={a},{b}", "--umx", f"{a},{b}", "--out", str(out)],
                            capture_output=True, text=True, check=True)
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in result.stdout.splitlines()}
    # at 5 min: vocals (1 + 2) / 2, bass (3 + 4) / 2, mean over sources 1.5 + 1.5; sample sd of two
    # values d apart: d / sqrt(2)
    assert "| 1.50 ± 0.71 | 2.50 ± 0.71 | 3.50 ± 0.71 | 4.50 ± 0.71 | 3.00 ± 0.71 |" in rows[("small", "5")]
    assert "| 4.00 ± 1.41 |" in rows[("small", "20")]
    assert "| 3.00 ± 1.41 |" in rows[("Open-Unmix (scaled)", "20")]
    assert out.stat().st_size > 10_000


def test_a_run_without_snapshots_is_named(tmp_path):
    a = _run_folder(tmp_path, "plain", {})
    result = subprocess.run([sys.executable, str(SCRIPT), "--run", f"x={a}", "--out", str(tmp_path / "c.png")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "plain/results.json: no msslab snapshots" in result.stderr
