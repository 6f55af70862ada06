"""The published weights records: torchvision's, timm's and Keras's ImageNet files, and ours.

One [`WeightsRecord`][mobilenets.zoo.published.WeightsRecord] per file: where it is, how to check
it, under which license, how its images were preprocessed, the numerics it was trained with
(padding, BN epsilon, V3's width rule) and its published accuracy.
[`mobilenets.zoo.pretrained`][mobilenets.zoo.pretrained] finds, downloads and loads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenets.core.spec import ModelConfig, format_alpha
from mobilenets.zoo.convert import (
    SOURCE_NUMERICS,
    SOURCE_WIDTH_RULES,
    SOURCES,
    is_v3,
    source_numerics,
)
from mobilenets.zoo.published_v4 import TIMM_V4_FILES, TIMM_V4_REFERENCE
from mobilenets.zoo.registry import TFSLIM_V1, TFSLIM_V2, TFSLIM_V3, list_models

# Who publishes weights: the three ecosystems whose files we convert, and this project.
OURS = "mobilenets"
PUBLISHERS = (*SOURCES, OURS)
NUMERICS = {**SOURCE_NUMERICS, OURS: {"padding": "symmetric", "bn_eps": 1e-5}}
LICENSES = {
    OURS: "Apache-2.0 (mobilenets); trained on Fashion-MNIST (MIT, Zalando Research)",
    "torchvision": "BSD-3-Clause (torchvision); ImageNet terms of access apply",
    "timm": "Apache-2.0 (timm); ImageNet terms of access apply",
    "keras": "Apache-2.0 (Keras applications, from TF-slim); ImageNet terms of access apply",
}
# Keras and TF-slim models read x / 127.5 - 1: mean and std 0.5 on the [0, 1] scale.
TF_RANGE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class WeightsRecord:
    """One published weights file and everything needed to use and trust it."""

    arch: str
    alpha: float
    resolution: int  # the input size it was trained and evaluated at
    source: str  # torchvision, timm, keras, or mobilenets (ours)
    tag: str  # the publisher's name for this file (IMAGENET1K_V1, ra_in1k, ...)
    url: str  # ours: the file's path in the source repository
    sha256: str | None  # full digest or the publisher's prefix; None when none is published
    license: str
    preprocessing: Preprocessing  # mean/std, resize then center crop, interpolation
    top1: float | None  # published validation accuracy (ImageNet-1k, or the record's data), %
    top5: float | None
    reference: str  # where top1/top5 were published
    num_classes: int = 1000
    in_chans: int = 3
    small_input: bool = False
    minimalistic: bool = False  # V3's minimalistic variant
    tf_port: bool = False  # TF-trained weights in timm's layout (timm's tf_* models)
    # How the publisher's own model takes its input, where it differs from our tensor (Keras
    # V3 rescales [0, 255] pixels itself); our model reads ``preprocessing``'s tensor.
    source_inputs: str | None = None
    # timm's test_input_size: the larger input its accuracy is reported at, where it has one
    test_preprocessing: Preprocessing | None = None

    @property
    def numerics(self) -> dict:
        """Padding and BN settings the weights were trained with."""
        if self.source == OURS:
            return NUMERICS[OURS]
        return source_numerics(self.source, self.arch, self.tf_port)

    @property
    def padding(self) -> str:
        return self.numerics["padding"]

    @property
    def bn_eps(self) -> float:
        return self.numerics["bn_eps"]

    @property
    def width_rule(self) -> str | None:
        """V3's width rule of the file (torchvision's or TF-slim's); None for V1 and V2."""
        return SOURCE_WIDTH_RULES.get(self.source, "tf") if is_v3(self.arch) else None

    @property
    def any_resolution(self) -> bool:
        """torchvision's and timm's files serve any input size (the net is fully convolutional
        and the preprocessing scales with it); Keras publishes one file per size, and ours
        serves the size it was trained at."""
        return self.source in ("torchvision", "timm")

    @property
    def model_name(self) -> str:
        """The registered name that loads these weights: the file's own size when the grid has
        it, else the width's 224 name (our 28 px file: the file brings its own input size)."""
        arch = f"{self.arch}_minimalistic" if self.minimalistic else self.arch
        name = f"{arch}_{format_alpha(self.alpha)}_{self.resolution}"
        if name in list_models(task=None):
            return name
        return f"{arch}_{format_alpha(self.alpha)}_224"

    @property
    def file_name(self) -> str:
        name = self.url.rsplit("/", 1)[-1]
        if self.source == "timm" and name == "model.safetensors":  # one name for every hub repo
            name = f"{self.url.split('/')[-4]}.safetensors"
        return name

    def preprocessing_for(self, resolution: int) -> Preprocessing:
        """The evaluation preprocessing at another input size: resize and crop scale together."""
        return self.preprocessing.at(resolution)

    def config(self, **overrides) -> ModelConfig:
        fields = dict(arch=self.arch, alpha=self.alpha, resolution=self.resolution)
        if is_v3(self.arch):
            fields.update(minimalistic=self.minimalistic, width_rule=self.width_rule)
        return ModelConfig(**fields, **self.numerics, **overrides)

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "source": self.source,
            "tag": self.tag,
            "url": self.url,
            "sha256": self.sha256,
            "license": self.license,
            "preprocessing": self.preprocessing.to_dict(),
            "padding": self.padding,
            "bn_eps": self.bn_eps,
            "bn_momentum": self.numerics.get("bn_momentum"),
            "width_rule": self.width_rule,
            "source_inputs": self.source_inputs,
            "test_preprocessing": (
                None if self.test_preprocessing is None else self.test_preprocessing.to_dict()
            ),
            "top1": self.top1,
            "top5": self.top5,
            "reference": self.reference,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "small_input": self.small_input,
        }


def eval_preprocessing(resolution: int, mean, std, crop_pct: float, interpolation: str):
    return Preprocessing(
        resolution,
        tuple(mean),
        tuple(std),
        resize=round(resolution / crop_pct),
        interpolation=interpolation,
    )


def _torchvision_records() -> list[WeightsRecord]:
    """torchvision.models.MobileNet_V2_Weights, MobileNet_V3_Large_Weights and
    MobileNet_V3_Small_Weights; the hex in each file name is its sha256 prefix. The V2 recipes
    (IMAGENET1K_V2) evaluate with a 232 resize."""
    base = "https://download.pytorch.org/models/"
    rows = (
        ("mobilenet_v2", "IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", 256, 71.878, 90.286),
        ("mobilenet_v2", "IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", 232, 72.154, 90.822),
        (
            "mobilenet_v3_large",
            "IMAGENET1K_V1",
            "mobilenet_v3_large-8738ca79.pth",
            256,
            74.042,
            91.340,
        ),
        (
            "mobilenet_v3_large",
            "IMAGENET1K_V2",
            "mobilenet_v3_large-5c1a4163.pth",
            232,
            75.274,
            92.566,
        ),
        (
            "mobilenet_v3_small",
            "IMAGENET1K_V1",
            "mobilenet_v3_small-047dcff4.pth",
            256,
            67.668,
            87.402,
        ),
    )
    return [
        WeightsRecord(
            arch,
            1.0,
            224,
            "torchvision",
            tag,
            base + file,
            file.rsplit("-", 1)[1].split(".")[0],
            LICENSES["torchvision"],
            Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, resize=resize),
            top1,
            top5,
            "torchvision MobileNet_V2_Weights"
            if arch == "mobilenet_v2"
            else f"torchvision MobileNet_V3_{arch.rsplit('_', 1)[1].title()}_Weights",
        )
        for arch, tag, file, resize, top1, top5 in rows
    ]


# timm's pretrained configs (timm.models.get_pretrained_cfg) and results-imagenet.csv.
TIMM_ROWS = (
    # arch, alpha, tag, url, crop_pct, mean/std, top1, top5
    (
        "mobilenet_v1",
        1.0,
        "mobilenetv1_100.ra4_e3600_r224_in1k",
        "https://huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
        0.875,
        TF_RANGE,
        75.384,
        92.312,
    ),
    (
        "mobilenet_v1",
        1.25,
        "mobilenetv1_125.ra4_e3600_r224_in1k",
        "https://huggingface.co/timm/mobilenetv1_125.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
        0.9,
        TF_RANGE,
        76.928,
        93.216,
    ),
    (
        "mobilenet_v2",
        0.5,
        "mobilenetv2_050.lamb_in1k",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv2_050-3d30d450.pth",
        0.875,
        (IMAGENET_MEAN, IMAGENET_STD),
        65.930,
        86.102,
    ),
    (
        "mobilenet_v2",
        1.0,
        "mobilenetv2_100.ra_in1k",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv2_100_ra-b33bc2c4.pth",
        0.875,
        (IMAGENET_MEAN, IMAGENET_STD),
        72.936,
        91.002,
    ),
    (
        "mobilenet_v2",
        1.4,
        "mobilenetv2_140.ra_in1k",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv2_140_ra-21a4e913.pth",
        0.875,
        (IMAGENET_MEAN, IMAGENET_STD),
        76.528,
        93.008,
    ),
)


TIMM_WEIGHTS = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
TIMM_MIIL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-tresnet/"
TIMM_HUB = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
# timm's V3 weights (timm.models.get_pretrained_cfg): tag, url, crop_pct, mean/std,
# interpolation; the model name gives the rest (see timm_v3_fields). The first of an (arch,
# alpha) is weights="timm"'s. The tf_* files are TF-slim's checkpoints in timm's layout, with
# 1000 classes (timm removed the background class).
TIMM_V3_ROWS = (
    ("mobilenetv3_large_100.ra_in1k", "mobilenetv3_large_100_ra-f55367f5.pth", IMAGENET),
    ("mobilenetv3_large_100.ra4_e3600_r224_in1k", None, TF_RANGE),
    (
        "mobilenetv3_large_100.miil_in21k_ft_in1k",
        "miil_78_0-66471c13.pth",
        ((0.0,) * 3, (1.0,) * 3),
    ),
    ("mobilenetv3_small_100.lamb_in1k", "mobilenetv3_small_100_lamb-266a294c.pth", IMAGENET),
    ("mobilenetv3_small_075.lamb_in1k", "mobilenetv3_small_075_lambc-384766db.pth", IMAGENET),
    ("mobilenetv3_small_050.lamb_in1k", "mobilenetv3_small_050_lambc-4b7bbe87.pth", IMAGENET),
    ("tf_mobilenetv3_large_075.in1k", "tf_mobilenetv3_large_075-150ee8b0.pth", TF_RANGE),
    ("tf_mobilenetv3_large_100.in1k", "tf_mobilenetv3_large_100-427764d5.pth", TF_RANGE),
    (
        "tf_mobilenetv3_large_minimal_100.in1k",
        "tf_mobilenetv3_large_minimal_100-8596ae28.pth",
        TF_RANGE,
    ),
    ("tf_mobilenetv3_small_075.in1k", "tf_mobilenetv3_small_075-da427f52.pth", TF_RANGE),
    ("tf_mobilenetv3_small_100.in1k", "tf_mobilenetv3_small_100-37f49e2b.pth", TF_RANGE),
    (
        "tf_mobilenetv3_small_minimal_100.in1k",
        "tf_mobilenetv3_small_minimal_100-922a7843.pth",
        TF_RANGE,
    ),
)


def timm_v3_fields(tag: str, file: str | None) -> dict:
    """What a timm V3 name says: ``tf_mobilenetv3_large_minimal_100.in1k`` is Large, minimalistic,
    alpha 1.0, a TF port; where its file is; its eval crop and interpolation."""
    name, _, recipe = tag.partition(".")
    if file is None:
        url = TIMM_HUB.format(tag)
    else:
        url = (TIMM_MIIL + "mobilenetv3_large_100_1k_" if "miil" in recipe else TIMM_WEIGHTS) + file
    return {
        "arch": "mobilenet_v3_large" if "_large_" in name else "mobilenet_v3_small",
        "alpha": int(name.rsplit("_", 1)[1]) / 100,
        "minimalistic": "_minimal_" in name,
        "tf_port": name.startswith("tf_"),
        "url": url,
        "crop_pct": 0.95 if recipe.startswith("ra4") else 0.875,
        # timm's own V3 recipes evaluate bicubic; the TF ports and the MIIL weights bilinear
        "interpolation": "bicubic"
        if recipe in ("ra_in1k", "lamb_in1k") or recipe.startswith("ra4")
        else "bilinear",
    }


def _timm_record(arch, alpha, tag, url, crop_pct, mean_std, interpolation, top1, top5, **fields):
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", url)
    return WeightsRecord(
        arch,
        alpha,
        224,
        "timm",
        tag,
        url,
        prefix.group(1) if prefix else None,
        LICENSES["timm"],
        eval_preprocessing(224, *mean_std, crop_pct, interpolation),
        top1,
        top5,
        "timm results/results-imagenet.csv @7479d451" if top1 else "timm pretrained_cfg",
        **fields,
    )


def _timm_records() -> list[WeightsRecord]:
    records = [
        _timm_record(arch, alpha, tag, url, crop_pct, mean_std, "bicubic", top1, top5)
        for arch, alpha, tag, url, crop_pct, mean_std, top1, top5 in TIMM_ROWS
    ]
    for tag, file, mean_std in TIMM_V3_ROWS:
        fields = timm_v3_fields(tag, file)
        arch, alpha, url = fields.pop("arch"), fields.pop("alpha"), fields.pop("url")
        crop_pct, interpolation = fields.pop("crop_pct"), fields.pop("interpolation")
        records.append(
            _timm_record(
                arch, alpha, tag, url, crop_pct, mean_std, interpolation, None, None, **fields
            )
        )
    return records + [_timm_v4_record(file) for file in TIMM_V4_FILES]


def _timm_v4_record(file) -> WeightsRecord:
    """A timm MobileNetV4 file (zoo/published_v4.py) at its training size, with its test size."""
    return WeightsRecord(
        file.arch,
        1.0,
        file.resolution,
        "timm",
        file.tag,
        TIMM_HUB.format(file.tag),
        None,
        LICENSES["timm"],
        eval_preprocessing(file.resolution, *file.mean_std, file.crop_pct, file.interpolation),
        file.top1,
        file.top5,
        TIMM_V4_REFERENCE,
        test_preprocessing=eval_preprocessing(
            file.test_resolution, *file.mean_std, file.test_crop_pct, file.interpolation
        ),
    )


KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_V1_ALPHA = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}


def _keras_records() -> list[WeightsRecord]:
    """keras.applications MobileNet and MobileNetV2: one file per (alpha, resolution), the
    TF-slim checkpoints converted. Their accuracy is TF-slim's table (the blog's figures)."""
    records = []
    for arch, table in (("mobilenet_v1", TFSLIM_V1), ("mobilenet_v2", TFSLIM_V2)):
        for alpha, resolution, _macs, _params, top1, top5 in table:
            if arch == "mobilenet_v1":
                file = f"mobilenet/mobilenet_{KERAS_V1_ALPHA[alpha]}_{resolution}_tf.h5"
                reference = "TF-slim mobilenet_v1.md"
            else:
                file = (
                    "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels"
                    f"_{float(alpha)}_{resolution}.h5"
                )
                reference = "TF-slim mobilenet/README.md"
            records.append(
                WeightsRecord(
                    arch,
                    alpha,
                    resolution,
                    "keras",
                    "imagenet",
                    KERAS_BASE + file,
                    None,
                    LICENSES["keras"],
                    eval_preprocessing(resolution, *TF_RANGE, 0.875, "bilinear"),
                    top1,
                    top5,
                    reference,
                )
            )
    return records + _keras_v3_records()


# Keras's MobileNetV3Large/Small(include_preprocessing=True), the default, start with a
# Rescaling layer (x / 127.5 - 1): they read [0, 255] pixels. Ours reads the rescaled tensor,
# which mean/std 0.5 on [0, 1] pixels gives; include_preprocessing=False models read it too.
KERAS_V3_INPUTS = (
    "[0, 255] pixels, rescaled to [-1, 1] inside the Keras model (include_preprocessing=True)"
)


def _keras_v3_records() -> list[WeightsRecord]:
    """keras.applications MobileNetV3Large/Small: one file per (variant, alpha), at 224, 1000
    classes (Keras refuses classes != 1000 with these weights; no background class)."""
    records = []
    for arch, minimalistic, alpha, _macs, _params, top1 in TFSLIM_V3:
        variant = arch.rsplit("_", 1)[1] + ("_minimalistic" if minimalistic else "")
        file = f"mobilenet_v3/weights_mobilenet_v3_{variant}_224_{float(alpha)}_float.h5"
        records.append(
            WeightsRecord(
                arch,
                alpha,
                224,
                "keras",
                "imagenet",
                KERAS_BASE + file,
                None,
                LICENSES["keras"],
                eval_preprocessing(224, *TF_RANGE, 0.875, "bilinear"),
                top1,
                None,
                "keras.applications mobilenet_v3.py (TF-slim's V3 table)",
                minimalistic=minimalistic,
                source_inputs=KERAS_V3_INPUTS,
            )
        )
    return records


def _our_records() -> list[WeightsRecord]:
    """The Fashion-MNIST model of docs/results/fashion-mnist.md: MobileNetV2 1.4, small-input,
    120 epochs. Its normalisation is Fashion-MNIST's (the data's mean and std)."""
    return [
        WeightsRecord(
            "mobilenet_v2",
            1.4,
            28,
            OURS,
            "fashion-mnist",
            "weights/mobilenet_v2_1.4_fashion-mnist.safetensors",
            "fc2afaeee2c3e4f53f7e34657a23f0ce0dad75980cc3264cede2fcec4dec7b12",
            LICENSES[OURS],
            Preprocessing(28, (0.286,), (0.353,), channels=1),
            95.40,
            99.89,
            "docs/results/fashion-mnist.md: Fashion-MNIST test set, one pass (95.58 with flip TTA)",
            num_classes=10,
            in_chans=1,
            small_input=True,
        )
    ]


RECORDS: tuple[WeightsRecord, ...] = (
    *_torchvision_records(),
    *_timm_records(),
    *_keras_records(),
    *_our_records(),
)
