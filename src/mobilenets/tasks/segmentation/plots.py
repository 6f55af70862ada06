"""A segmentation run's figures: its training curves and the IoU of each class.

Drawn with matplotlib's object-oriented Figure through
[`mobilenets.engine.plots`][mobilenets.engine.plots] (no pyplot, no global backend; the ``plots``
extra), and written atomically by
[`save_figure`][mobilenets.engine.plots.save_figure].
"""

from __future__ import annotations

import math
from pathlib import Path

from mobilenets.engine.plots import figure_class, save_figure


def plot_segmentation_curves(history: list[dict], path: str | Path) -> Path:
    """Per epoch, side by side: the training loss (the total, and with an auxiliary head its
    main and auxiliary cross-entropies), and the validation mIoU and pixel accuracy."""
    epochs = [row["epoch"] for row in history]
    figure = figure_class()(figsize=(10, 4))
    loss_axes, score_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], "o-", label="train (total)")
    if history and "train_aux_loss" in history[0]:
        loss_axes.plot(epochs, [row["train_ce_loss"] for row in history], "s--", label="main")
        loss_axes.plot(epochs, [row["train_aux_loss"] for row in history], "^--", label="aux")
    loss_axes.set(xlabel="epoch", ylabel="pixel cross-entropy", title="training loss")
    score_axes.plot(epochs, [100 * row["val_mIoU"] for row in history], "o-", label="mIoU")
    score_axes.plot(
        epochs, [100 * row["val_pixel_accuracy"] for row in history], "s-", label="pixel accuracy"
    )
    score_axes.set(xlabel="epoch", ylabel="%", title="validation")
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def plot_class_iou(
    iou: list[float | None], classes: list[str], path: str | Path, title: str = "IoU per class"
) -> Path:
    """A horizontal bar per class with its IoU in percent, written beside the bar; a class
    with no IoU (``None`` or NaN: in neither the ground truth nor the predictions) is marked
    "absent". A dashed line marks the mIoU, the mean over the classes that have an IoU."""
    values = [None if value is None or math.isnan(value) else 100 * value for value in iou]
    present = [value for value in values if value is not None]
    height = max(3.0, 0.28 * len(classes) + 1.2)
    figure = figure_class()(figsize=(7, height))
    axes = figure.subplots()
    rows = range(len(classes))
    axes.barh(rows, [value or 0.0 for value in values], color="tab:blue")
    for row, value in zip(rows, values, strict=True):
        text = "absent" if value is None else f"{value:.1f}"
        axes.text((value or 0.0) + 1, row, text, va="center", fontsize=7)
    axes.set_yticks(list(rows), classes, fontsize=7 if len(classes) > 20 else 9)
    axes.invert_yaxis()  # class 0 at the top
    axes.set_xlim(0, 110)
    if present:
        mean = sum(present) / len(present)
        axes.axvline(mean, color="tab:red", linestyle="--", label=f"mIoU {mean:.1f}")
        axes.legend(loc="lower right")
    axes.set(xlabel="IoU (%)", title=title)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)
