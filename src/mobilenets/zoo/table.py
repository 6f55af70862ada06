"""The zoo as a table: every registered classifier with its exact cost beside the published
figures, and the V1 Figure 4 style plot of published top-1 against MACs.

The plot needs matplotlib (the ``plots`` extra), imported only when a plot is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.spec import format_alpha
from mobilenets.zoo.factory import cost
from mobilenets.zoo.registry import get_entry, list_models

FAMILIES = {
    "v1": "mobilenet_v1",
    "v2": "mobilenet_v2",
    "v3": "mobilenet_v3",
    "v4": "mobilenet_v4",
}


def zoo_rows(family: str | None = None) -> list[dict]:
    """One record per registered classifier (of ``family``, ``"v1"`` to ``"v4"``):
    name, arch, alpha, resolution, our exact params and MACs for 1000 classes, the published
    checkpoint's figures (``reference``, None where none was published) and the papers' rows."""
    if family is not None and family not in FAMILIES:
        raise MobileNetsError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    pattern = f"{FAMILIES[family]}_*" if family else "*"
    rows = []
    for name in list_models(pattern):
        entry = get_entry(name)
        report = cost(name)
        reference = entry.reference
        rows.append(
            {
                "name": name,
                "arch": entry.arch,
                "alpha": entry.alpha,
                "resolution": entry.resolution,
                "params": report.params,
                "macs": report.macs,
                "reference": None if reference is None else vars(reference),
                "paper": [vars(row) for row in entry.paper],
            }
        )
    return rows


def plot_zoo(rows: list[dict], path: str | os.PathLike) -> Path:
    """Published top-1 against MACs (log scale), one line per family and alpha, each point
    labelled with its input resolution (V1 Figure 4); the format follows the file's suffix."""
    Figure = require("matplotlib.figure", "plotting the zoo").Figure  # the plots extra
    lines: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        if row["reference"] and row["reference"]["top1"] is not None:
            # by name without width and size: V3's minimalistic variants are lines of their own
            lines.setdefault((row["name"].rsplit("_", 2)[0], row["alpha"]), []).append(row)
    if not lines:
        raise MobileNetsError("no variant in this selection has a published top-1 to plot")
    figure = Figure(figsize=(8, 5.5))
    axes = figure.subplots()
    for (arch, alpha), points in sorted(lines.items()):
        points.sort(key=lambda row: row["macs"])
        macs = [row["macs"] / 1e6 for row in points]
        top1 = [row["reference"]["top1"] for row in points]
        marker = "o" if arch == "mobilenet_v1" else "s"
        style = "--" if arch == "mobilenet_v1" else "-"
        axes.plot(macs, top1, style, marker=marker, label=f"{arch} {format_alpha(alpha)}")
        for row, x, y in zip(points, macs, top1, strict=True):
            axes.annotate(
                str(row["resolution"]),
                (x, y),
                fontsize=6,
                xytext=(3, -8),
                textcoords="offset points",
            )
    axes.set_xscale("log")
    axes.set_xlabel("multiply-adds (millions, log scale)")
    axes.set_ylabel("ImageNet top-1 (%), as published")
    axes.set_title("MobileNets: accuracy against mult-adds (labels: input resolution)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path = Path(path)
    # Written in place, not through atomic_path, which would create a missing folder: a plot
    # is no state a crash could corrupt, and a mistyped folder should be an error.
    try:
        figure.savefig(path, dpi=120)
    except OSError as error:
        raise MobileNetsError(f"cannot write plot {str(path)!r}: {error}") from error
    return path
