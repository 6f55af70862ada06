"""Published weights: the official ImageNet weights of torchvision, timm and Keras, and ours.

Each published file has a [`WeightsRecord`][mobilenets.zoo.pretrained.WeightsRecord]: where it
is, how to check it, under which license, how its images were preprocessed, the numerics it was
trained with (padding, BN epsilon) and its published accuracy. ``create_model(name,
weights="keras")`` finds the record, downloads the file once into the cache
([`cache_dir`][mobilenets.zoo.download.cache_dir]), converts it
([`mobilenets.zoo.convert`][mobilenets.zoo.convert]) and loads it.

We publish one file of our own, ``weights="mobilenets:fashion-mnist"``: MobileNetV2 1.4
(small-input, one channel, 10 classes) trained on Fashion-MNIST to 95.40% test top-1 (95.58%
with flip TTA). It ships in the source repository (``weights/``), verified by its full sha256;
it is a checkpoint of ours, so it brings its own classes, input channels and input size.

Digests: torchvision and timm's GitHub releases publish the first 8 hex digits of each file's
sha256 in its name, and the download verifies them. Keras and the Hugging Face hub publish no
digest; for those files the first download's sha256 is pinned in a ``.sha256`` file beside the
cached copy, and every later load verifies the copy against it.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import MobileNet, build_model
from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenets.core.spec import ModelConfig, format_alpha
from mobilenets.core.weights import load_weights
from mobilenets.zoo import download as downloads
from mobilenets.zoo.convert import SOURCE_NUMERICS, SOURCES, convert_file
from mobilenets.zoo.registry import TFSLIM_V1, TFSLIM_V2, list_models

# Who publishes weights: the three ecosystems whose files we convert, and this project.
OURS = "mobilenets"
PUBLISHERS = (*SOURCES, OURS)
NUMERICS = {**SOURCE_NUMERICS, OURS: {"padding": "symmetric", "bn_eps": 1e-5}}
# Where our files are: the source checkout the package runs from (src/mobilenets/zoo/ here).
REPOSITORY = Path(__file__).resolve().parents[3]
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

    @property
    def padding(self) -> str:
        return NUMERICS[self.source]["padding"]

    @property
    def bn_eps(self) -> float:
        return NUMERICS[self.source]["bn_eps"]

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
        name = f"{self.arch}_{format_alpha(self.alpha)}_{self.resolution}"
        if name in list_models(task=None):
            return name
        return f"{self.arch}_{format_alpha(self.alpha)}_224"

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
        return ModelConfig(**fields, padding=self.padding, bn_eps=self.bn_eps, **overrides)

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
            "top1": self.top1,
            "top5": self.top5,
            "reference": self.reference,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "small_input": self.small_input,
        }


def _eval_preprocessing(resolution: int, mean, std, crop_pct: float, interpolation: str):
    return Preprocessing(
        resolution,
        tuple(mean),
        tuple(std),
        resize=round(resolution / crop_pct),
        interpolation=interpolation,
    )


def _torchvision_records() -> list[WeightsRecord]:
    """torchvision.models.MobileNet_V2_Weights; the hex in each file name is its sha256 prefix."""
    base = "https://download.pytorch.org/models/"
    rows = (
        ("IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", 256, 71.878, 90.286),
        ("IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", 232, 72.154, 90.822),
    )
    return [
        WeightsRecord(
            "mobilenet_v2",
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
            "torchvision MobileNet_V2_Weights",
        )
        for tag, file, resize, top1, top5 in rows
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


def _timm_records() -> list[WeightsRecord]:
    records = []
    for arch, alpha, tag, url, crop_pct, (mean, std), top1, top5 in TIMM_ROWS:
        prefix = re.search(r"-([0-9a-f]{8})\.pth$", url)
        records.append(
            WeightsRecord(
                arch,
                alpha,
                224,
                "timm",
                tag,
                url,
                prefix.group(1) if prefix else None,
                LICENSES["timm"],
                _eval_preprocessing(224, mean, std, crop_pct, "bicubic"),
                top1,
                top5,
                "timm results/results-imagenet.csv @7479d451",
            )
        )
    return records


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
                    _eval_preprocessing(resolution, *TF_RANGE, 0.875, "bilinear"),
                    top1,
                    top5,
                    reference,
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


def default_preprocessing(source: str, resolution: int) -> Preprocessing:
    """How a source's ImageNet models read images, for a file without a published record."""
    mean, std = TF_RANGE if source == "keras" else (IMAGENET_MEAN, IMAGENET_STD)
    interpolation = "bicubic" if source == "timm" else "bilinear"
    return _eval_preprocessing(resolution, mean, std, 0.875, interpolation)


def check_publisher(source: str) -> None:
    if source not in PUBLISHERS:
        raise MobileNetsError(
            f"weights source must be one of {', '.join(PUBLISHERS)}, got {source!r}"
        )


def list_weights(source: str | None = None) -> list[WeightsRecord]:
    if source is not None:
        check_publisher(source)
    return [record for record in RECORDS if source in (None, record.source)]


def parse_weights(weights: str) -> tuple[str, str | None]:
    """``"keras"`` -> ("keras", None); ``"torchvision:IMAGENET1K_V2"`` -> (source, tag)."""
    source, _, tag = weights.partition(":")
    check_publisher(source)
    return source, tag or None


def find_record(config: ModelConfig, weights: str) -> WeightsRecord:
    """The record of ``weights`` (a source, or source:tag) for the model ``config`` describes.

    torchvision and timm files serve any input resolution (the net is fully convolutional, and
    the preprocessing scales with it); Keras publishes one file per resolution. A record's
    classes, input channels and strides must be the config's, unless the config leaves them at
    the ImageNet model's (1000, 3, standard): then the weights bring theirs (see
    [`published_config`][mobilenets.zoo.pretrained.published_config]).
    """
    source, tag = parse_weights(weights)
    candidates = [
        record
        for record in list_weights(source)
        if (record.arch, record.alpha) == (config.arch, config.alpha)
        and (source != "keras" or record.resolution == config.resolution)
        and (tag is None or record.tag == tag)
    ]
    if not candidates:
        available = list_weights(source)
        if source != "keras":
            names = sorted({f"{r.arch} alpha {r.alpha:g} [{r.tag}]" for r in available})
        else:
            names = sorted({r.model_name for r in available})
        wanted = f"{config.name}" + ("" if tag is None else f" with tag {tag!r}")
        raise MobileNetsError(
            f"{source} publishes no weights for {wanted}; it has {', '.join(names)}"
        )
    record = candidates[0]
    imagenet = {"num_classes": 1000, "in_chans": 3, "small_input": False}
    wanted = {
        "num_classes": record.num_classes,
        "in_chans": record.in_chans,
        "small_input": record.small_input,
        "expansion": 6 if config.arch == "mobilenet_v2" else None,
    }
    differ = {
        key: getattr(config, key)
        for key, want in wanted.items()
        if getattr(config, key) not in (want, imagenet.get(key, want))
    }
    if differ:
        settings = ", ".join(f"{key}={value!r}" for key, value in differ.items())
        model = (
            "the ImageNet model (1000 classes, 3 channels, standard strides)"
            if record.num_classes == 1000
            else f"a {record.num_classes}-class, {record.in_chans}-channel model"
        )
        raise MobileNetsError(
            f"{source} weights are for {model}; got {settings}. Load them into that model, "
            "then call model.reset_classifier(N) to fine-tune on N classes, or train from them "
            f"with weights={source!r}, which adapts them (mobilenets.zoo.transfer)"
        )
    return record


def published_config(config: ModelConfig, record: WeightsRecord) -> ModelConfig:
    """The config of the model ``record``'s weights fill: ``config``'s architecture and width
    with the record's classes, channels, strides and numerics, and its input size unless the
    file serves any
    ([`any_resolution`][mobilenets.zoo.pretrained.WeightsRecord.any_resolution])."""
    resolution = config.resolution if record.any_resolution else record.resolution
    return config.replace(
        num_classes=record.num_classes,
        in_chans=record.in_chans,
        small_input=record.small_input,
        resolution=resolution,
        **NUMERICS[record.source],
    )


def fetch_weights(record: WeightsRecord, progress: bool = True) -> Path:
    """The cached file of ``record``, downloaded and verified on first use; ours, the file in
    the source repository, verified."""
    if record.source == OURS:
        return repository_file(record)
    path = downloads.cache_dir() / record.source / record.file_name
    pin = path.with_name(path.name + ".sha256")
    if record.sha256 is not None:
        return downloads.download(record.url, path, sha256=record.sha256, progress=progress)
    pinned = pin.read_text().strip() if pin.is_file() else None
    if pinned is not None and path.is_file():
        actual = downloads.file_digest(path)
        if actual != pinned:
            raise MobileNetsError(
                f"cached weights {str(path)!r} changed since they were downloaded: sha256 "
                f"{actual}, pinned {pinned}; delete the file to download it again"
            )
        return path
    path = downloads.download(record.url, path, progress=progress)
    pin.write_text(downloads.file_digest(path) + "\n")
    return path


def repository_file(record: WeightsRecord) -> Path:
    """Our published file, in the source repository, checked against its sha256."""
    path = REPOSITORY / record.url
    if not path.is_file():
        raise MobileNetsError(
            f"the {record.source}:{record.tag} weights ship in the mobilenets source repository "
            f"({record.url}), which this installation does not come from; install from a clone "
            "of it, or pass that file as weights=PATH"
        )
    actual = downloads.file_digest(path)
    if actual != record.sha256:
        raise MobileNetsError(
            f"{str(path)!r} does not match its record: sha256 {actual}, published {record.sha256}"
        )
    return path


def load_pretrained(
    config: ModelConfig, weights: str, progress: bool = True
) -> tuple[MobileNet, WeightsRecord, Path]:
    """A model of ``config`` with the published weights ``weights`` names (in eval mode), its
    record and the cached file it was read from."""
    record = find_record(config, weights)
    path = fetch_weights(record, progress=progress)
    config = published_config(config, record)
    if record.source == OURS:
        model = build_model(config)
        load_weights(model, path)
    else:
        state, config, _report = convert_file(path, record.source, config)
        model = build_model(config)
        model.load_state_dict(state, strict=True)
    model.weights_record = record
    return model.eval(), record, path


def looks_like_source(weights: str) -> bool:
    """True for ``"keras"``, ``"timm:ra_in1k"`` or ``"mobilenets:fashion-mnist"``; False for a
    file path."""
    return weights.partition(":")[0] in PUBLISHERS and not os.path.exists(weights)


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (n01440764 is class 0)."""
    text = resources.files("mobilenets.zoo").joinpath("imagenet_synsets.txt").read_text()
    return tuple(text.split())


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """Human-readable names of the 1000 classes, in class-index order (the names torchvision
    publishes with its ImageNet weights; one per line in ``imagenet_classes.txt``)."""
    text = resources.files("mobilenets.zoo").joinpath("imagenet_classes.txt").read_text()
    return tuple(text.splitlines())
