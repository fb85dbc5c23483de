"""The accuracy-against-images-seen PNG drawn beside the results file.

One line per protocol (top-1 of the checkpoints, x = images seen), and the random-initialised
baseline of the same protocol as a dashed horizontal line of the same colour, so the gain that
pretraining bought is read off the picture. Drawn with matplotlib's Agg backend (no display on
a cluster) and written atomically: a dashboard or a browser never shows half a PNG.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from seer_core.checkpoint import atomic_write_bytes

PROTOCOL_ORDER = ("knn", "linear", "lowshot", "finetune")


def _protocol_key(name: str) -> tuple[int, float, str]:
    """knn20 < knn200 < linear < lowshot1pct < lowshot10pct < finetune."""
    for i, family in enumerate(PROTOCOL_ORDER):
        if name.startswith(family):
            digits = "".join(c for c in name[len(family):] if c.isdigit() or c == ".")
            return i, float(digits) if digits else 0.0, name
    return len(PROTOCOL_ORDER), 0.0, name


def data_name(spec: str) -> str:
    """How the plot names a labelled set: an object-store URI as given (it names the same set
    on every machine); a local path by its last two components (`quality-real/labelled`),
    never the absolute path of the machine that drew it."""
    spec = spec.rstrip("/")
    if "://" in spec:
        return spec
    parts = [p for p in Path(spec).parts if p not in ("/", "\\", ".")]
    return "/".join(parts[-2:]) or spec


def plot_accuracy(rows: Iterable[dict[str, Any]], out: str | Path, *, run: str, stage: str,
                  data: str | None = None) -> Path | None:
    """Draws top-1 against images seen for one run and stage; None when nothing to draw."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = defaultdict(dict)
    baseline: dict[str, float] = {}
    for row in rows:
        if (row.get("run"), row.get("stage"), row.get("metric")) != (run, stage, "top1") or (
                data is not None and row.get("data") != data):
            continue
        if row.get("trunk") == "random":
            baseline[row["protocol"]] = float(row["value"])
        elif row.get("trunk") == "checkpoint":
            series[row["protocol"]][int(row.get("images_seen") or 0)] = float(row["value"])
    if not series and not baseline:
        return None
    protocols = sorted(set(series) | set(baseline), key=_protocol_key)
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        for i, protocol in enumerate(protocols):
            colour = colours(i % 10)
            points = sorted(series.get(protocol, {}).items())
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=protocol)
            if protocol in baseline:
                ax.axhline(baseline[protocol], color=colour, linestyle="--", linewidth=1,
                           label=f"{protocol} (random init)")
        ax.set_xlabel("images seen")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{run}: {stage} frozen features" + (f" on {data_name(data)}" if data else ""),
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 4))
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(out, buf.getvalue())
    finally:
        plt.close(fig)
    return Path(out)
