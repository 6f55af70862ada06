"""The zoo as a table: every registered classifier with its exact cost beside the published
figures, its family and best published ImageNet top-1 (what the family chart plots), and the V1
Figure 4 style plot of published top-1 against MACs.

The plot needs matplotlib (the ``plots`` extra), imported only when a plot is drawn.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.spec import format_alpha
from mobilenets.zoo.factory import cost
from mobilenets.zoo.pretrained import list_weights
from mobilenets.zoo.published import OURS
from mobilenets.zoo.registry import ModelEntry, get_entry, list_models

FAMILY_PATTERN = re.compile(r"mobilenet_(v\d+)")  # the family of an arch: mobilenet_v3_small: v3


def family_of(arch: str) -> str:
    """The family key of an arch name, ``"v1"`` ... ``"v4"``: what ``--family`` takes."""
    match = FAMILY_PATTERN.match(arch)
    if match is None:
        raise MobileNetsError(f"arch {arch!r} is not named mobilenet_vN[_...]: no family")
    return match.group(1)


def registered_families() -> list[str]:
    """The family keys of the registered classifiers, in order: a family registered later (its
    named variants) is listed without a change here."""
    keys = {family_of(get_entry(name).arch) for name in list_models()}
    return sorted(keys, key=lambda key: int(key[1:]))


def zoo_rows(family: str | Sequence[str] | None = None) -> list[dict]:
    """One record per registered classifier (of ``family``, one key of
    [`registered_families`][mobilenets.zoo.table.registered_families] such as ``"v2"``, or a
    list of them): name, arch, family, alpha, resolution, our exact params and MACs for 1000
    classes, the published checkpoint's figures (``reference``, None where none was published),
    the papers' rows, and the best published ImageNet top-1 of a weights file for this exact
    variant (``top1``, with ``top1_source``; None where no file or table publishes one)."""
    chosen = [family] if isinstance(family, str) else family
    known = registered_families()
    for key in chosen or ():
        if key not in known:
            raise MobileNetsError(f"family must be one of {', '.join(known)}, got {key!r}")
    rows = []
    for name in list_models():
        entry = get_entry(name)
        if chosen and family_of(entry.arch) not in chosen:
            continue
        report = cost(name)
        reference = entry.reference
        rows.append(
            {
                "name": name,
                "arch": entry.arch,
                "family": family_of(entry.arch),
                "alpha": entry.alpha,
                "resolution": entry.resolution,
                "params": report.params,
                "macs": report.macs,
                "reference": None if reference is None else vars(reference),
                "paper": [vars(row) for row in entry.paper],
                **published_top1(entry),
            }
        )
    return rows


def published_top1(entry: ModelEntry) -> dict:
    """``top1`` and ``top1_source`` of a named variant: the best ImageNet top-1 of the published
    weights records of this exact variant (arch, alpha, V3's minimalistic, input size), else its
    registry reference's (TF-slim's tables); None where neither publishes one."""
    config = entry.backbone
    candidates = [
        (record.top1, f"{record.source} {record.tag}")
        for record in list_weights()
        if record.source != OURS
        and record.num_classes == 1000
        and record.top1 is not None
        and (record.arch, record.alpha, record.resolution)
        == (entry.arch, entry.alpha, entry.resolution)
        and record.minimalistic == getattr(config, "minimalistic", False)
    ]
    if not candidates and entry.reference is not None and entry.reference.top1 is not None:
        candidates = [(entry.reference.top1, entry.reference.source)]
    top1, source = max(candidates, default=(None, None))
    return {"top1": top1, "top1_source": source}


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
