"""The model registry: named variants in TF-slim form, with their published reference figures.

One dict, filled once at import, that refuses a duplicate name. A grid name such as
``mobilenet_v2_0.75_160`` fixes alpha and resolution; the family names ``mobilenet_v1`` and
``mobilenet_v2`` take ``alpha=`` and ``resolution=`` or ``rho=``.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass

from mobilenets.errors import MobileNetsError
from mobilenets.models import MobileNet, build_model
from mobilenets.spec import ARCHS, ModelConfig, format_alpha, pick_resolution
from mobilenets.weights import PARITY_FIELDS, load_weights, saved_config

SOURCE_TFSLIM_V1 = "TF-slim research/slim/nets/mobilenet_v1.md"
SOURCE_TFSLIM_V2 = "TF-slim research/slim/nets/mobilenet/README.md"


@dataclass(frozen=True)
class Reference:
    """Figures as published: millions of MACs and parameters, ImageNet top-1/top-5 in %."""

    source: str
    macs_m: float | None = None
    params_m: float | None = None
    top1: float | None = None
    top5: float | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    arch: str
    alpha: float
    resolution: int
    reference: Reference | None  # the released checkpoint's figures (TF-slim READMEs)
    paper: tuple[Reference, ...] = ()  # rows of the papers' tables for this variant

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, alpha=self.alpha, resolution=self.resolution)


# TF-slim's V1 checkpoint table: alpha, resolution, MMACs, Mparams, top-1, top-5.
TFSLIM_V1 = (
    (1.0, 224, 569, 4.24, 70.9, 89.9),
    (1.0, 192, 418, 4.24, 70.0, 89.2),
    (1.0, 160, 291, 4.24, 68.0, 87.7),
    (1.0, 128, 186, 4.24, 65.2, 85.8),
    (0.75, 224, 317, 2.59, 68.4, 88.2),
    (0.75, 192, 233, 2.59, 67.2, 87.3),
    (0.75, 160, 162, 2.59, 65.3, 86.0),
    (0.75, 128, 104, 2.59, 62.1, 83.9),
    (0.5, 224, 150, 1.34, 63.3, 84.9),
    (0.5, 192, 110, 1.34, 61.7, 83.6),
    (0.5, 160, 77, 1.34, 59.1, 81.9),
    (0.5, 128, 49, 1.34, 56.3, 79.4),
    (0.25, 224, 41, 0.47, 49.8, 74.2),
    (0.25, 192, 34, 0.47, 47.7, 72.3),
    (0.25, 160, 21, 0.47, 45.5, 70.3),
    (0.25, 128, 14, 0.47, 41.5, 66.3),
)

# TF-slim's V2 checkpoint table. It has 1.4 and 1.3 at 224 only.
TFSLIM_V2 = (
    (1.4, 224, 582, 6.06, 75.0, 92.5),
    (1.3, 224, 509, 5.34, 74.4, 92.1),
    (1.0, 224, 300, 3.47, 71.8, 91.0),
    (1.0, 192, 221, 3.47, 70.7, 90.1),
    (1.0, 160, 154, 3.47, 68.8, 89.0),
    (1.0, 128, 99, 3.47, 65.3, 86.9),
    (1.0, 96, 56, 3.47, 60.3, 83.2),
    (0.75, 224, 209, 2.61, 69.8, 89.6),
    (0.75, 192, 153, 2.61, 68.7, 88.9),
    (0.75, 160, 107, 2.61, 66.4, 87.3),
    (0.75, 128, 69, 2.61, 63.2, 85.3),
    (0.75, 96, 39, 2.61, 58.8, 81.6),
    (0.5, 224, 97, 1.95, 65.4, 86.4),
    (0.5, 192, 71, 1.95, 63.9, 85.4),
    (0.5, 160, 50, 1.95, 61.0, 83.2),
    (0.5, 128, 32, 1.95, 57.7, 80.8),
    (0.5, 96, 18, 1.95, 51.2, 75.8),
    (0.35, 224, 59, 1.66, 60.3, 82.9),
    (0.35, 192, 43, 1.66, 58.2, 81.2),
    (0.35, 160, 30, 1.66, 55.7, 79.1),
    (0.35, 128, 20, 1.66, 50.8, 75.0),
    (0.35, 96, 11, 1.66, 45.5, 70.4),
)

# The papers' tables: (arch, alpha, resolution, source, MMACs, Mparams, top-1).
PAPER_ROWS = (
    ("mobilenet_v1", 1.0, 224, "Howard et al. 2017, Table 6", 569, 4.2, 70.6),
    ("mobilenet_v1", 0.75, 224, "Howard et al. 2017, Table 6", 325, 2.6, 68.4),
    ("mobilenet_v1", 0.5, 224, "Howard et al. 2017, Table 6", 149, 1.3, 63.7),
    ("mobilenet_v1", 0.25, 224, "Howard et al. 2017, Table 6", 41, 0.5, 50.6),
    ("mobilenet_v1", 1.0, 224, "Howard et al. 2017, Table 7", 569, 4.2, 70.6),
    ("mobilenet_v1", 1.0, 192, "Howard et al. 2017, Table 7", 418, 4.2, 69.1),
    ("mobilenet_v1", 1.0, 160, "Howard et al. 2017, Table 7", 290, 4.2, 67.2),
    ("mobilenet_v1", 1.0, 128, "Howard et al. 2017, Table 7", 186, 4.2, 64.4),
    ("mobilenet_v2", 1.0, 224, "Sandler et al. 2018, Table 4", 300, 3.4, 72.0),
    ("mobilenet_v2", 1.4, 224, "Sandler et al. 2018, Table 4", 585, 6.9, 74.7),
)

V1_GRID = ((1.0, 0.75, 0.5, 0.25), (224, 192, 160, 128))
V2_GRID = ((1.4, 1.3, 1.0, 0.75, 0.5, 0.35), (224, 192, 160, 128, 96))

_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY or entry.name in ARCHS:
        raise MobileNetsError(f"model name {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def _register_grid() -> None:
    published = {("mobilenet_v1", alpha, res): row for alpha, res, *row in TFSLIM_V1} | {
        ("mobilenet_v2", alpha, res): row for alpha, res, *row in TFSLIM_V2
    }
    sources = {"mobilenet_v1": SOURCE_TFSLIM_V1, "mobilenet_v2": SOURCE_TFSLIM_V2}
    for arch, (alphas, resolutions) in (("mobilenet_v1", V1_GRID), ("mobilenet_v2", V2_GRID)):
        for alpha in alphas:
            for resolution in resolutions:
                row = published.get((arch, alpha, resolution))
                reference = Reference(sources[arch], *row) if row else None
                paper = tuple(
                    Reference(source, macs, params, top1)
                    for a, al, res, source, macs, params, top1 in PAPER_ROWS
                    if (a, al, res) == (arch, alpha, resolution)
                )
                name = f"{arch}_{format_alpha(alpha)}_{resolution}"
                register(ModelEntry(name, arch, alpha, resolution, reference, paper))


_register_grid()


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern: ``list_models("mobilenet_v2_1.0_*")``."""
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def get_entry(name: str) -> ModelEntry:
    """The registry entry for a grid name; an unknown name gets the closest names suggested."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise MobileNetsError(_unknown_name_message(name))


def _unknown_name_message(name) -> str:
    candidates = [*ARCHS, *_REGISTRY]
    close = difflib.get_close_matches(str(name), candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown model {name!r}{hint} (families: {', '.join(ARCHS)}; "
        f"{len(_REGISTRY)} named variants, see `mobilenets zoo`)"
    )


CONFIG_OVERRIDES = (
    "alpha", "resolution", "rho", "num_classes", "in_chans", "dropout", "expansion",
    "padding", "bn_eps", "bn_momentum", "small_input",
)  # fmt: skip


def resolve_config(name_or_config: str | ModelConfig, **overrides) -> ModelConfig:
    """The ModelConfig for a grid name, a family name, or a config, with overrides applied.

    Overrides set to None are ignored, so callers can pass optional arguments straight through.
    """
    unknown = sorted(set(overrides) - set(CONFIG_OVERRIDES))
    if unknown:
        raise MobileNetsError(
            f"unknown argument(s) {unknown}; allowed: {', '.join(CONFIG_OVERRIDES)}"
        )
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if isinstance(name_or_config, ModelConfig):
        base = name_or_config
    elif not isinstance(name_or_config, str):
        raise MobileNetsError(
            f"a model name is a string such as 'mobilenet_v2_1.0_224', got {name_or_config!r}"
        )
    elif name_or_config in ARCHS:
        base = ModelConfig(arch=name_or_config)
    else:
        base = get_entry(name_or_config).config
    resolution, rho = overrides.pop("resolution", None), overrides.pop("rho", None)
    if resolution is not None or rho is not None:
        overrides["resolution"] = pick_resolution(resolution, rho)
    return base.replace(**overrides)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | None = None,
    progress: bool = True,
    **overrides,
) -> MobileNet:
    """Build a registered model: ``create_model("mobilenet_v2_1.0_224")``,
    ``create_model("mobilenet_v1", alpha=0.5, rho=0.714)``.

    ``weights`` is one of:

    - ``"keras"``, ``"torchvision"`` or ``"timm"`` (optionally ``"torchvision:IMAGENET1K_V2"``):
      that ecosystem's published ImageNet weights, downloaded once to the cache, verified,
      converted, with the padding and BN epsilon they were trained with. The model's
      ``weights_record`` then holds the file's record (preprocessing, license, accuracy).
    - a path to our own weights (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
      ``torch.load(weights_only=True)``); a file written by save_weights also sets the padding
      and BN epsilon it was trained with, unless they are given here.
    - a path to a foreign file: a Keras ``.h5`` or a torchvision/timm state dict, converted.
    """
    from mobilenets import pretrained
    from mobilenets.convert import convert_file, detect_source

    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise MobileNetsError(
            f"weights must be 'keras', 'torchvision', 'timm' or a file path, got {weights!r}"
        )
    if isinstance(weights, str) and pretrained.looks_like_source(weights):
        config = resolve_config(name, num_classes=num_classes, in_chans=in_chans, **overrides)
        return pretrained.load_pretrained(config, weights, progress=progress)[0]
    saved = saved_config(weights) if weights is not None else None
    if saved is not None:
        for key in PARITY_FIELDS:
            if overrides.get(key) is None:
                overrides[key] = getattr(saved, key)
    config = resolve_config(name, num_classes=num_classes, in_chans=in_chans, **overrides)
    source = detect_source(weights) if weights is not None and saved is None else None
    if source is not None:
        state, config, _report = convert_file(weights, source, config)
        model = build_model(config)
        model.load_state_dict(state, strict=True)
        return model
    model = build_model(config)
    if weights is not None:
        load_weights(model, weights)
    return model
