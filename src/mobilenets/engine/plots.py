"""Training curves and the confusion matrix as PNG files.

matplotlib's object-oriented Figure is used directly: no pyplot, so no global backend is chosen
or left behind. matplotlib is the ``plots`` extra (``pip install 'mobilenets[plots]'``),
imported when a figure is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.extras import require
from mobilenets.core.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOTTING = "plotting the training curves and the confusion matrix"


def figure_class() -> type[Figure]:
    """matplotlib's Figure, or the error that says to install the plots extra. A training run
    asks for it before its first epoch, so that a missing matplotlib fails then, not after the
    last one."""
    return require("matplotlib.figure", PLOTTING).Figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=path.suffix.lstrip(".") or "png", dpi=120)
    except OSError as error:
        raise MobileNetsError(f"cannot write plot {str(path)!r}: {error}") from error
    return path


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Loss (train and validation) and top-1 accuracy per epoch, side by side."""
    epochs = [row["epoch"] for row in history]
    figure = figure_class()(figsize=(10, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss_axes.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    accuracy_axes.plot(
        epochs, [100 * row["train_top1"] for row in history], "o-", label="train (augmented)"
    )
    accuracy_axes.plot(epochs, [100 * row["val_top1"] for row in history], "s-", label="val")
    accuracy_axes.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path) -> Path:
    """Row-normalized confusion matrix (rows: true class), with the counts written in cells
    when there are few enough classes to read them."""
    confusion = confusion.double()
    rates = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.45 * len(classes) + 2)
    figure = figure_class()(figsize=(size + 1, size))
    axes = figure.subplots()
    image = axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    if len(classes) <= 30:
        axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        axes.set_yticks(range(len(classes)), classes, fontsize=7)
    if len(classes) <= 20:
        for row in range(len(classes)):
            for column in range(len(classes)):
                color = "white" if rates[row, column] > 0.5 else "black"
                axes.text(
                    column,
                    row,
                    int(confusion[row, column]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color=color,
                )
    accuracy = confusion.diagonal().sum() / confusion.sum().clamp(min=1)
    axes.set(
        xlabel="predicted", ylabel="true", title=f"confusion matrix (top-1 {100 * accuracy:.2f}%)"
    )
    figure.tight_layout()
    return save_figure(figure, path)
