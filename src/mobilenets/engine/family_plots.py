"""The family chart's two pictures: published ImageNet top-1 against the latency measured on this
CPU ("On your CPU"), and accuracy of models trained here against params, MACs and latency
("Trained here").

Both read plain rows (dicts, as [`mobilenets.deploy.bench.family`][mobilenets.deploy.bench.family]
makes them and its JSON keeps them), so a page is redrawn from its JSON without measuring again.
One colour per family, whatever families the rows hold; matplotlib is the ``plots`` extra.
"""

from __future__ import annotations

from pathlib import Path

from mobilenets.core.errors import MobileNetsError
from mobilenets.engine.plots import figure_class, save_figure

MARKERS = {"fp32": "o", "int8": "^"}  # filled circle: fp32; triangle: int8
FILLED = {"fp32": True, "int8": False}


def _colours(rows: list[dict]) -> dict[str, str]:
    """One colour per family, from matplotlib's default cycle, in family order."""
    families = sorted({row["family"] for row in rows}, key=lambda key: int(key[1:]))
    return {family: f"C{index % 10}" for index, family in enumerate(families)}


def _short(name: str) -> str:
    return name.removeprefix("mobilenet_")


def plot_family_chart(chart: dict, path: str | Path) -> Path:
    """Published top-1 against batch-1 latency (log scale), fp32 and int8 as two marker styles,
    one colour per family, the Pareto front drawn as a step line with its members labelled. Rows
    without a published top-1 are not drawn (the table lists them)."""
    rows = [row for row in chart["rows"] if row["top1"] is not None]
    points = [
        (row, precision)
        for row in rows
        for precision in MARKERS
        if row.get(f"{precision}_ms") is not None
    ]
    if not points:
        raise MobileNetsError("no variant in this chart has a published top-1 and a latency")
    colours = _colours(rows)
    figure = figure_class()(figsize=(10, 6.5))
    axes = figure.subplots()
    for family, colour in colours.items():
        for precision, marker in MARKERS.items():
            mine = [row for row, p in points if p == precision and row["family"] == family]
            if not mine:
                continue
            axes.scatter(
                [row[f"{precision}_ms"] for row in mine],
                [row["top1"] for row in mine],
                marker=marker,
                s=36,
                color=colour if FILLED[precision] else "none",
                edgecolors=colour,
                label=f"{family} {precision}",
            )
    front = sorted(
        ((row[f"{p}_ms"], row["top1"], row, p) for row, p in points if p in row.get("front", ())),
        key=lambda point: point[0],
    )
    if front:
        axes.step(
            [x for x, *_ in front],
            [y for _, y, *_ in front],
            where="post",
            color="black",
            linewidth=1,
            alpha=0.6,
            label="Pareto front",
        )
        for x, y, row, precision in front:
            axes.annotate(
                f"{_short(row['name'])} {precision}",
                (x, y),
                fontsize=6,
                xytext=(4, 3),
                textcoords="offset points",
            )
    axes.set_xscale("log")
    axes.set_xlabel(f"batch-1 latency (ms, log scale), median, {chart['threads']} threads")
    axes.set_ylabel("ImageNet top-1 (%), as published (fp32 weights)")
    axes.set_title(f"MobileNets on this CPU: {chart['environment'].split(', ', 1)[-1]}", fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2, loc="lower right")
    figure.tight_layout()
    return save_figure(figure, path)


TRAINED_PANELS = (
    ("params", 1e6, "parameters (millions)"),
    ("macs", 1e6, "multiply-adds (millions)"),
    ("fp32_ms", 1, "batch-1 latency (ms), fastest runtime"),
)


def plot_trained(rows: list[dict], path: str | Path) -> Path:
    """Test accuracy (fp32 and int8) of trained models against params, MACs and latency, three
    panels; one colour per family, int8 accuracy at the int8 latency in the latency panel."""
    if not rows:
        raise MobileNetsError("no trained model to plot")
    colours = _colours(rows)
    metric = rows[0]["metric"]
    figure = figure_class()(figsize=(14, 4.8))
    panels = figure.subplots(1, len(TRAINED_PANELS), sharey=True)
    for axes, (key, scale, label) in zip(panels, TRAINED_PANELS, strict=True):
        for row in rows:
            colour = colours[row["family"]]
            for precision, marker in MARKERS.items():
                accuracy = row.get(f"{precision}_accuracy")
                x_key = f"{precision}_ms" if key == "fp32_ms" else key
                if accuracy is None or row.get(x_key) is None:
                    continue
                axes.scatter(
                    row[x_key] / scale,
                    100 * accuracy,
                    marker=marker,
                    s=40,
                    color=colour if FILLED[precision] else "none",
                    edgecolors=colour,
                )
            axes.annotate(
                _short(row["name"]),
                (row[key] / scale, 100 * row["fp32_accuracy"]),
                fontsize=6,
                xytext=(4, 3),
                textcoords="offset points",
            )
        axes.set_xlabel(label)
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel(f"test {metric} (%)")
    for family, colour in colours.items():
        panels[0].scatter([], [], color=colour, label=family)
    for precision, marker in MARKERS.items():
        filled = "black" if FILLED[precision] else "none"
        panels[0].scatter([], [], marker=marker, color=filled, edgecolors="black", label=precision)
    panels[0].legend(fontsize=7)
    figure.suptitle("Trained here: one short schedule per model, test accuracy fp32 and int8")
    figure.tight_layout()
    return save_figure(figure, path)
