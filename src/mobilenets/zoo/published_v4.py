"""timm's MobileNetV4 ImageNet-1k files: the only published V4 weights (the paper's TF Model
Garden code released no checkpoints).

One row per file of timm's ``mobilenetv4_*`` pretrained configs (timm/models/mobilenetv3.py,
``default_cfgs``) that has 1000 classes; the in12k files (11821 classes) are left out. Each row
carries timm's evaluation preprocessing: the train-size input with ``crop_pct``, and the larger
``test_input_size`` (with ``test_crop_pct``) at which timm reports its accuracy. The first row of
an architecture is ``weights="timm"``'s, timm's default; a model at another registered size
takes the file trained at that size. [`mobilenets.zoo.published`][mobilenets.zoo.published]
makes the records.
"""

from __future__ import annotations

from dataclasses import dataclass

from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from mobilenets.core.published_v4 import V4_TABLE6, PublishedV4

# timm's IMAGENET_INCEPTION_MEAN/STD: the [-1, 1] range of TF models.
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
# top-1 and top-5 at the file's training size and crop, as timm's repository measured them
# (results/results-imagenet.csv; the package does not ship it).
TIMM_V4_REFERENCE = "timm results/results-imagenet.csv @aa4b5850, at the training size"


@dataclass(frozen=True)
class TimmV4File:
    """One timm V4 file: its tag (model.recipe), training input size and eval crop, and the
    larger test size timm measures it at."""

    arch: str
    tag: str
    resolution: int
    crop_pct: float
    test_resolution: int
    test_crop_pct: float
    mean_std: tuple = IMAGENET
    interpolation: str = "bicubic"  # every V4 config of timm evaluates bicubic
    top1: float | None = None
    top5: float | None = None


TIMM_V4_FILES = (
    TimmV4File(
        "mobilenet_v4_conv_small",
        "mobilenetv4_conv_small.e2400_r224_in1k",
        224,
        0.875,
        256,
        0.95,
        top1=73.756,
        top5=91.43,
    ),
    TimmV4File(
        "mobilenet_v4_conv_small",
        "mobilenetv4_conv_small.e1200_r224_in1k",
        224,
        0.875,
        256,
        0.95,
        top1=73.45,
        top5=91.34,
    ),
    TimmV4File(
        "mobilenet_v4_conv_small",
        "mobilenetv4_conv_small.e3600_r256_in1k",
        256,
        0.95,
        320,
        1.0,
        INCEPTION,
        top1=74.534,
        top5=91.94,
    ),
    TimmV4File(
        "mobilenet_v4_conv_medium",
        "mobilenetv4_conv_medium.e500_r256_in1k",
        256,
        0.95,
        320,
        1.0,
        top1=79.916,
        top5=95.188,
    ),
    TimmV4File(
        "mobilenet_v4_conv_medium",
        "mobilenetv4_conv_medium.e500_r224_in1k",
        224,
        0.95,
        256,
        1.0,
        top1=79.092,
        top5=94.788,
    ),
    # ImageNet-12k pretraining, fine-tuned on 1k; timm gives it no larger test size
    TimmV4File(
        "mobilenet_v4_conv_medium",
        "mobilenetv4_conv_medium.e250_r384_in12k_ft_in1k",
        384,
        0.95,
        384,
        0.95,
        top1=82.776,
        top5=96.448,
    ),
    TimmV4File(
        "mobilenet_v4_conv_large",
        "mobilenetv4_conv_large.e600_r384_in1k",
        384,
        0.95,
        448,
        1.0,
        top1=82.974,
        top5=96.244,
    ),
    TimmV4File(
        "mobilenet_v4_conv_large",
        "mobilenetv4_conv_large.e500_r256_in1k",
        256,
        0.95,
        320,
        1.0,
        top1=81.864,
        top5=95.696,
    ),
    TimmV4File(
        "mobilenet_v4_hybrid_medium",
        "mobilenetv4_hybrid_medium.e200_r256_in12k_ft_in1k",
        256,
        0.95,
        320,
        1.0,
        top1=82.36,
        top5=96.256,
    ),
    TimmV4File(
        "mobilenet_v4_hybrid_medium",
        "mobilenetv4_hybrid_medium.ix_e550_r256_in1k",
        256,
        0.95,
        320,
        1.0,
        top1=81.478,
        top5=95.692,
    ),
    TimmV4File(
        "mobilenet_v4_hybrid_medium",
        "mobilenetv4_hybrid_medium.ix_e550_r384_in1k",
        384,
        0.95,
        448,
        1.0,
        top1=82.952,
        top5=96.47,
    ),
    TimmV4File(
        "mobilenet_v4_hybrid_medium",
        "mobilenetv4_hybrid_medium.e500_r224_in1k",
        224,
        0.95,
        256,
        1.0,
        top1=80.432,
        top5=95.378,
    ),
    TimmV4File(
        "mobilenet_v4_hybrid_large",
        "mobilenetv4_hybrid_large.ix_e600_r384_in1k",
        384,
        0.95,
        448,
        1.0,
        top1=83.996,
        top5=96.714,
    ),
    TimmV4File(
        "mobilenet_v4_hybrid_large",
        "mobilenetv4_hybrid_large.e600_r384_in1k",
        384,
        0.95,
        448,
        1.0,
        top1=83.826,
        top5=96.748,
    ),
)


def named_sizes() -> list[tuple[PublishedV4, int, bool]]:
    """(Table 6 row, resolution, native) of every V4 size the registry names: each model at its
    native size (Table 6's), then at each other size timm trained an ImageNet-1k file at."""
    sizes = []
    for row in V4_TABLE6:
        trained = [file.resolution for file in TIMM_V4_FILES if file.arch == row.arch]
        native = row.config.resolution
        sizes += [(row, size, size == native) for size in dict.fromkeys([native, *trained])]
    return sizes
