"""Published weights: the official ImageNet weights of torchvision, timm and Keras, and ours.

Each published file has a [`WeightsRecord`][mobilenets.zoo.published.WeightsRecord]: where it
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
from importlib import resources
from pathlib import Path

from mobilenets.core.errors import MobileNetsError
from mobilenets.core.models import MobileNet, build_model
from mobilenets.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mobilenets.core.spec import ModelConfig
from mobilenets.core.weights import load_weights
from mobilenets.zoo import download as downloads
from mobilenets.zoo.convert import convert_file
from mobilenets.zoo.published import NUMERICS as NUMERICS
from mobilenets.zoo.published import OURS as OURS
from mobilenets.zoo.published import PUBLISHERS as PUBLISHERS
from mobilenets.zoo.published import RECORDS as RECORDS
from mobilenets.zoo.published import TF_RANGE as TF_RANGE
from mobilenets.zoo.published import WeightsRecord as WeightsRecord
from mobilenets.zoo.published import eval_preprocessing

# Where our files are: the source checkout the package runs from (src/mobilenets/zoo/ here).
REPOSITORY = Path(__file__).resolve().parents[3]


def default_preprocessing(source: str, resolution: int) -> Preprocessing:
    """How a source's ImageNet models read images, for a file without a published record."""
    mean, std = TF_RANGE if source == "keras" else (IMAGENET_MEAN, IMAGENET_STD)
    interpolation = "bicubic" if source == "timm" else "bilinear"
    return eval_preprocessing(resolution, mean, std, 0.875, interpolation)


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
        if (record.arch, record.alpha, record.minimalistic)
        == (config.arch, config.alpha, config.minimalistic)
        and not config.reduced_tail  # published only inside torchvision's detectors/segmenters
        and (source != "keras" or record.resolution == config.resolution)
        and (tag is None or record.tag == tag)
    ]
    if not candidates:
        # the same architecture's files first: for "an alpha no stack defines"
        available = list_weights(source)
        if source != "keras":
            names = [
                f"{r.arch}{' minimalistic' if r.minimalistic else ''} alpha {r.alpha:g} [{r.tag}]"
                for r in available
            ]
        else:
            names = [r.model_name for r in available]
        # the same architecture's files first: for "an alpha no stack defines"
        names = sorted(set(names), key=lambda name: (not name.startswith(config.arch), name))
        wanted = f"{config.name}" + ("" if tag is None else f" with tag {tag!r}")
        raise MobileNetsError(
            f"{source} publishes no weights for {wanted}; it has {', '.join(names)}"
        )
    # a file trained at the model's size first (timm's V4 files come at several), else the default
    record = min(candidates, key=lambda record: record.resolution != config.resolution)
    if record.width_rule not in (None, config.width_rule) and config.alpha != 1:
        raise MobileNetsError(
            f"{source} weights for {record.model_name} have {record.width_rule!r} widths; "
            f"{config.name} has width_rule={config.width_rule!r}, another network at alpha "
            f"{config.alpha:g}; allowed: width_rule={record.width_rule!r}"
        )
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
    ([`any_resolution`][mobilenets.zoo.published.WeightsRecord.any_resolution])."""
    resolution = config.resolution if record.any_resolution else record.resolution
    if record.width_rule is not None:  # V3: the file's widths (the same net at alpha 1)
        config = config.replace(width_rule=record.width_rule)
    return config.replace(
        num_classes=record.num_classes,
        in_chans=record.in_chans,
        small_input=record.small_input,
        resolution=resolution,
        **record.numerics,
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
        state, config, _report = convert_file(path, record.source, config, tf_port=record.tf_port)
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
