"""Starting a model from other weights: fine-tuning a classifier, or a detector's backbone.

[`source_model`][mobilenets.zoo.transfer.source_model] reads the weights a user names (published
ImageNet weights, a run of ours, a torchvision/timm/Keras file) as the classification model they
were saved from. [`transfer_weights`][mobilenets.zoo.transfer.transfer_weights] then loads them into
a model for another task: a new classifier where the class count differs, and the stem's filters
folded onto another number of input channels (a grayscale dataset from RGB weights). Every other
tensor must fit exactly, or nothing loads.
"""

from __future__ import annotations

import math
import os

import torch

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import MobileNet
from mobilenets.core.spec import DEFAULT_RESOLUTION
from mobilenets.core.weights import (
    PARITY_FIELDS,
    load_model,
    mismatch_report,
    read_state_dict,
    saved_config,
)
from mobilenets.zoo.factory import create_model
from mobilenets.zoo.pretrained import looks_like_source

ARCH_FIELDS = ("arch", "alpha", "expansion")  # what the weights must share with the model
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
# The first conv and the classifier under each state-dict naming we read (ours, timm,
# torchvision): the two layers whose shapes say the file's input channels and classes.
STEM_KEYS = ("stem.conv.weight", "conv_stem.weight", "features.0.0.weight")
CLASSIFIER_KEYS = ("classifier.weight", "classifier.1.weight")


def source_model(
    weights,
    arch: str,
    *,
    alpha: float = 1.0,
    expansion: int | None = None,
    resolution: int = DEFAULT_RESOLUTION,
    progress: bool = True,
    argument: str = "weights",
) -> MobileNet:
    """The classification model that ``weights`` holds, for a model of ``arch``/``alpha``.

    ``weights`` is a built MobileNet; ``"torchvision"``/``"timm"``/``"keras"`` or
    ``SOURCE:TAG`` (the published ImageNet model, downloaded once to the cache); a file written
    by ``mobilenets train`` or ``save_weights`` (its recorded config); or a state dict of ours,
    torchvision's or timm's, or a Keras ``.h5`` (classes and input channels read from the
    tensors). The model keeps the padding and BN epsilon the weights were trained with.
    ``resolution`` picks among Keras's files, one per input size; the weights of the others
    serve any size.
    ``argument`` names ``weights`` in the error for a value of another type.
    """
    if isinstance(weights, MobileNet):
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise MobileNetsError(
            f"{argument} must be a MobileNet, 'torchvision', 'timm', 'keras' (or SOURCE:TAG) "
            f"or a file path, got {weights!r}"
        )
    common = dict(alpha=alpha, expansion=expansion, resolution=resolution)
    if isinstance(weights, str) and looks_like_source(weights):
        return create_model(arch, weights=weights, progress=progress, **common)
    if saved_config(weights) is not None:
        return load_model(weights)
    num_classes, in_chans = file_head_and_stem(weights)
    return create_model(arch, num_classes=num_classes, in_chans=in_chans, weights=weights, **common)


def file_head_and_stem(path) -> tuple[int, int]:
    """The class count and input channels of a state-dict file without a recorded config
    (1000 and 3, ImageNet's, where the file does not show them)."""
    if str(path).endswith(KERAS_SUFFIXES):
        return 1000, 3
    state = read_state_dict(path)
    classifier = next((state[key] for key in CLASSIFIER_KEYS if key in state), None)
    stem = next((state[key] for key in STEM_KEYS if key in state), None)
    num_classes = 1000 if classifier is None else classifier.shape[0]
    in_chans = 3 if stem is None or stem.ndim != 4 else stem.shape[1]
    return num_classes, in_chans


def fold_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first conv's filters ``(out, c, k, k)`` for ``in_chans`` input channels.

    One channel gets the sum over the c: its response to a gray image equals the RGB filters'
    response to that gray in every channel. More channels repeat the c cyclically, scaled by
    c / in_chans: the response to a gray image is the same where in_chans is a multiple of c,
    and of the same size otherwise.
    """
    channels = weight.shape[1]
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeated = weight.repeat(1, math.ceil(in_chans / channels), 1, 1)[:, :in_chans]
    return repeated * (channels / in_chans)


def transfer_weights(model: MobileNet, source: MobileNet) -> list[str]:
    """Load ``source``'s weights into ``model`` to fine-tune it; returns what was adapted.

    The classifier stays as ``model`` initialised it where the class counts differ, and the stem's
    filters are folded ([`fold_input_channels`][mobilenets.zoo.transfer.fold_input_channels]) where
    the input channels differ. Any other difference (another architecture, alpha, expansion, or
    padding and BN epsilon than ``model`` was built with) raises, naming it, and loads nothing.
    """
    ours, theirs = model.config, source.config
    differ = [
        f"{key} {getattr(theirs, key)!r} (need {getattr(ours, key)!r})"
        for key in (*ARCH_FIELDS, *PARITY_FIELDS)
        if getattr(theirs, key) != getattr(ours, key)
    ]
    if differ:
        raise MobileNetsError(
            f"weights of {source.name} do not fit {model.name}: " + "; ".join(differ)
        )
    state = source.state_dict()
    notes = []
    if theirs.num_classes != ours.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("classifier.")})
        notes.append(
            f"a new classifier for {ours.num_classes} classes (the weights have "
            f"{theirs.num_classes})"
        )
    if theirs.in_chans != ours.in_chans:
        key = "stem.conv.weight"
        state[key] = fold_input_channels(state[key], ours.in_chans)
        how = "summed" if ours.in_chans == 1 else "repeated and rescaled"
        notes.append(
            f"the stem's filters {how} from {theirs.in_chans} input channels to {ours.in_chans}"
        )
    problems = mismatch_report(model, state)
    if problems:
        raise MobileNetsError(
            f"weights of {source.name} do not fit {model.name}: " + ", ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return notes
