"""The model registry: every task's named models, with their published reference figures.

One dict, filled once at import, that refuses a duplicate name. Classifiers have TF-slim names:
a grid name such as ``mobilenet_v2_0.75_160`` fixes alpha and resolution; the family names
``mobilenet_v1`` and ``mobilenet_v2`` (every family of ``mobilenets.core.spec.families()``) take
``alpha=`` and ``resolution=`` or ``rho=``. Detectors (``ssdlite_mobilenet_v2``) and segmenters are
registered beside them with their own config and the papers' figures; each entry says which task it
belongs to. ``ssdlite_<family>`` and ``deeplabv3_<family>`` name any family's detector and
segmenter, registered or not.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from mobilenets.core.detection_spec import DetectionConfig
from mobilenets.core.errors import MobileNetsError
from mobilenets.core.families import families
from mobilenets.core.published_v4 import SOURCE_V4_PAPER
from mobilenets.core.segmentation_spec import TABLE7, V3_TABLE7, SegmentationConfig
from mobilenets.core.spec import ModelConfig, format_alpha, pick_resolution
from mobilenets.zoo.published_v4 import named_sizes

SOURCE_TFSLIM_V1 = "TF-slim research/slim/nets/mobilenet_v1.md"
SOURCE_TFSLIM_V2 = "TF-slim research/slim/nets/mobilenet/README.md"
# The V3 table of the same README (keras.applications' MobileNetV3 docstring quotes it).
SOURCE_TFSLIM_V3 = "TF-slim research/slim/nets/mobilenet/README.md, V3"


@dataclass(frozen=True)
class Reference:
    """Figures as published: millions of MACs and parameters, ImageNet top-1/top-5 in %."""

    source: str
    macs_m: float | None = None
    params_m: float | None = None
    top1: float | None = None
    top5: float | None = None


TASKS = ("classification", "detection", "segmentation")


@dataclass(frozen=True)
class ModelEntry:
    """A named model: its task, its config, and the figures published for it."""

    name: str
    config: ModelConfig | DetectionConfig | SegmentationConfig
    reference: Reference | None = None  # the released checkpoint's figures (TF-slim READMEs)
    paper: tuple[Reference, ...] = ()  # rows of the papers' tables for this model

    @property
    def task(self) -> str:
        if isinstance(self.config, DetectionConfig):
            return "detection"
        if isinstance(self.config, SegmentationConfig):
            return "segmentation"
        return "classification"

    @property
    def backbone(self) -> ModelConfig:
        """The classification network: the model itself, or a detector's or segmenter's
        backbone."""
        return self.config if isinstance(self.config, ModelConfig) else self.config.backbone

    @property
    def arch(self) -> str:
        return self.backbone.arch

    @property
    def alpha(self) -> float:
        return self.backbone.alpha

    @property
    def resolution(self) -> int:
        return self.config.resolution


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

# TF-slim's V3 checkpoint table, the widths TF-slim, Keras and timm (tf_*) released, all at 224:
# arch, minimalistic, alpha, MMACs, Mparams, top-1. Its params count 1001 classes.
TFSLIM_V3 = (
    ("mobilenet_v3_large", False, 1.0, 217, 5.4, 75.6),
    ("mobilenet_v3_large", False, 0.75, 155, 4.0, 73.3),
    ("mobilenet_v3_large", True, 1.0, 209, 3.9, 72.3),
    ("mobilenet_v3_small", False, 1.0, 66, 2.9, 68.1),
    ("mobilenet_v3_small", False, 0.75, 44, 2.4, 65.4),
    ("mobilenet_v3_small", True, 1.0, 65, 2.0, 61.9),
)
# Widths only timm released: mobilenetv3_small_050. timm's mobilenetv3_large_150d (a depth
# multiplier of 1.2) and mobilenetv3_rw (its own early variant) are not the paper's nets.
V3_TIMM_ONLY = (("mobilenet_v3_small", False, 0.5),)

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
    if entry.name in _REGISTRY or entry.name in families():
        raise MobileNetsError(f"model name {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a name that register added (tests register toy models)."""
    if name not in _REGISTRY:
        raise MobileNetsError(f"no model {name!r} is registered")
    del _REGISTRY[name]


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
                config = ModelConfig(arch=arch, alpha=alpha, resolution=resolution)
                register(ModelEntry(name, config, reference, paper))


_register_grid()


def _register_v3() -> None:
    """Every V3 width a stack released, at 224 (every V3 checkpoint was trained at 224), with
    TF-slim's figures where TF-slim released it."""
    published = {(arch, mini, alpha): figures for arch, mini, alpha, *figures in TFSLIM_V3}
    for arch, minimalistic, alpha in (*published, *V3_TIMM_ONLY):
        config = ModelConfig(arch=arch, alpha=alpha, minimalistic=minimalistic)
        figures = published.get((arch, minimalistic, alpha))
        reference = Reference(SOURCE_TFSLIM_V3, *figures) if figures else None
        register(ModelEntry(config.name, config, reference))


_register_v3()


for _row, _resolution, _native in named_sizes():
    _config = ModelConfig(arch=_row.arch, resolution=_resolution)
    _paper = (Reference(SOURCE_V4_PAPER, _row.macs_g * 1000, _row.params_m),) if _native else ()
    register(ModelEntry(_config.name, _config, paper=_paper))


SOURCE_SSDLITE_PAPER = "Sandler et al. 2018, Table 6, SSDLite at 320x320"

register(
    ModelEntry(
        "ssdlite_mobilenet_v2",
        DetectionConfig(ModelConfig(arch="mobilenet_v2")),
        paper=(Reference(SOURCE_SSDLITE_PAPER, macs_m=800, params_m=4.3),),
    )
)


SOURCE_DEEPLAB_PAPER = "Sandler et al. 2018, Table 7, PASCAL VOC 2012 val at 513x513"


def _table7_references(arch: str, aspp: bool) -> tuple[Reference, ...]:
    """The Table 7 rows of one registered segmenter (MACs in millions, one row per output
    stride; the OS 8 rows are multi-scale with flips)."""
    return tuple(
        Reference(
            f"{SOURCE_DEEPLAB_PAPER}, OS {row.output_stride}{', MF' if row.multiscale else ''}",
            macs_m=row.madds_b * 1000,
            params_m=row.params_m,
        )
        for row in TABLE7
        if (row.arch, row.aspp) == (arch, aspp)
    )


# V1's Table 7 rows have ASPP; V2's recommended model ("MNet V2*", 2.11M) has not.
for _arch, _aspp in (("mobilenet_v1", True), ("mobilenet_v2", False)):
    register(
        ModelEntry(
            f"deeplabv3_{_arch}",
            SegmentationConfig(ModelConfig(arch=_arch), aspp=_aspp),
            paper=_table7_references(_arch, _aspp),
        )
    )


# V3's task models (Howard et al. 2019, sections 6.2 and 6.4), on the reduced tail as the paper
# builds them: SSDLite (Table 6, at 320) and LR-ASPP (Table 7, Cityscapes at 1024x2048).
SOURCE_V3_SSDLITE_PAPER = "Howard et al. 2019, Table 6, SSDLite at 320x320 (COCO)"
SOURCE_V3_LRASPP_PAPER = "Howard et al. 2019, Table 7, LR-ASPP, Cityscapes at 1024x2048"
for _arch, _macs_m, _params_m in (
    ("mobilenet_v3_large", 510, 3.22),
    ("mobilenet_v3_small", 160, 1.77),
):
    register(
        ModelEntry(
            f"ssdlite_{_arch}",
            DetectionConfig(ModelConfig(arch=_arch, reduced_tail=True)),
            paper=(Reference(SOURCE_V3_SSDLITE_PAPER, macs_m=_macs_m, params_m=_params_m),),
        )
    )
for _row in V3_TABLE7:
    register(
        ModelEntry(
            f"lraspp_{_row.arch}",
            SegmentationConfig(ModelConfig(arch=_row.arch, reduced_tail=True), head="lraspp"),
            paper=(
                Reference(
                    SOURCE_V3_LRASPP_PAPER, macs_m=_row.madds_b * 1000, params_m=_row.params_m
                ),
            ),
        )
    )


def list_models(pattern: str = "*", task: str | None = "classification") -> list[str]:
    """Registered names matching a shell-style pattern: ``list_models("mobilenet_v2_1.0_*")``.

    ``task`` picks the classifiers (the default), the detectors (``"detection"``), or every
    registered model (``None``).
    """
    if task is not None and task not in TASKS:
        raise MobileNetsError(f"task must be one of {', '.join(TASKS)} or None, got {task!r}")
    return [
        name
        for name, entry in _REGISTRY.items()
        if fnmatch.fnmatchcase(name, pattern) and task in (None, entry.task)
    ]


# Every family serves every task: ``ssdlite_<arch>`` and ``deeplabv3_<arch>`` name a family's
# detector and segmenter with the task's defaults, unless registered above with the papers' figures.
FAMILY_TASKS = {
    "detection": ("ssdlite_", DetectionConfig),
    "segmentation": ("deeplabv3_", SegmentationConfig),
}


def _lookup(name) -> ModelEntry | None:
    """The registered entry of a name, or the family model it names (see FAMILY_TASKS)."""
    if not isinstance(name, str):
        return None
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry
    for prefix, config_type in FAMILY_TASKS.values():
        arch = name.removeprefix(prefix)
        if name.startswith(prefix) and arch in families():
            return ModelEntry(name, config_type(ModelConfig(arch=arch)))
    return None


def get_entry(name: str, task: str | None = None) -> ModelEntry:
    """The registry entry of a name (of ``task``'s models, when given); an unknown name gets the
    closest names suggested."""
    entry = _lookup(name)
    if entry is not None and task in (None, entry.task):
        return entry
    if entry is not None:
        raise MobileNetsError(f"{name!r} is a {entry.task} model, not a {task} model")
    raise MobileNetsError(_unknown_name_message(name, task))


def is_detector(name) -> bool:
    entry = _lookup(name)
    return entry is not None and entry.task == "detection"


def is_segmenter(name) -> bool:
    entry = _lookup(name)
    return entry is not None and entry.task == "segmentation"


def _unknown_name_message(name, task: str | None = None) -> str:
    names = list_models(task=task)
    family_names = families() if task in (None, "classification") else ()
    close = difflib.get_close_matches(str(name), [*family_names, *names], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if task == "detection":
        return f"unknown detector {name!r}{hint}; registered: {', '.join(names)}"
    if task == "segmentation":
        return f"unknown segmenter {name!r}{hint}; registered: {', '.join(names)}"
    return (
        f"unknown model {name!r}{hint} (families: {', '.join(families())}; "
        f"{len(list_models())} named variants, see `mobilenets zoo`)"
    )


CONFIG_OVERRIDES = (
    "alpha",
    "resolution",
    "rho",
    "num_classes",
    "in_chans",
    "dropout",
    "expansion",
    "padding",
    "bn_eps",
    "bn_momentum",
    "small_input",
    "output_stride",
    "width_rule",
    "minimalistic",
    "reduced_tail",
)


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
    elif name_or_config in families():
        base = ModelConfig(arch=name_or_config)
    else:
        base = get_entry(name_or_config, task="classification").config
    resolution, rho = overrides.pop("resolution", None), overrides.pop("rho", None)
    if resolution is not None or rho is not None:
        overrides["resolution"] = pick_resolution(resolution, rho)
    return base.replace(**overrides)


# Overrides each task's models take: their own (``*_OWN``), applied to the detector's or
# segmenter's config, and the backbone's width and numerics. Classification-only ones (rho,
# small_input) have no meaning for them.
DETECTION_OVERRIDES = (
    "alpha",
    "resolution",
    "num_classes",
    "expansion",
    "in_chans",
    "padding",
    "bn_eps",
    "bn_momentum",
)
DETECTION_OWN = ("resolution", "num_classes")
SEGMENTATION_OVERRIDES = (
    "alpha",
    "resolution",
    "num_classes",
    "output_stride",
    "aspp",
    "atrous_rates",
    "aux",
    "dropout",
    "expansion",
    "in_chans",
    "padding",
    "bn_eps",
    "bn_momentum",
)
SEGMENTATION_OWN = (
    "resolution",
    "num_classes",
    "output_stride",
    "aspp",
    "atrous_rates",
    "aux",
    "dropout",
)


def _resolve_task_config(
    name_or_config,
    config_type: type,
    task: str,
    noun: str,
    allowed: tuple[str, ...],
    own_keys: tuple[str, ...],
    overrides: dict,
):
    """A detector's or segmenter's config from a registered name or a config, with ``overrides``
    applied: ``own_keys`` to the config itself, the rest to its backbone (those set to None are
    ignored, so callers can pass optional arguments straight through)."""
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise MobileNetsError(
            f"argument(s) {unknown} do not apply to a {noun}; allowed: {', '.join(allowed)}"
        )
    if isinstance(name_or_config, config_type):
        config = name_or_config
    else:
        config = get_entry(name_or_config, task=task).config
    own = {key: overrides.pop(key) for key in own_keys if key in overrides}
    backbone = config.backbone.replace(**overrides) if overrides else config.backbone
    return config.replace(backbone=backbone, **own)


def resolve_detection_config(name_or_config: str | DetectionConfig, **overrides) -> DetectionConfig:
    """The DetectionConfig of a registered name or a config, with overrides applied (those set
    to None are ignored, so callers can pass optional arguments straight through)."""
    return _resolve_task_config(
        name_or_config,
        DetectionConfig,
        "detection",
        "detector",
        DETECTION_OVERRIDES,
        DETECTION_OWN,
        overrides,
    )


def resolve_segmentation_config(
    name_or_config: str | SegmentationConfig, **overrides
) -> SegmentationConfig:
    """The SegmentationConfig of a registered name or a config, with overrides applied (those set
    to None are ignored, so callers can pass optional arguments straight through)."""
    return _resolve_task_config(
        name_or_config,
        SegmentationConfig,
        "segmentation",
        "segmenter",
        SEGMENTATION_OVERRIDES,
        SEGMENTATION_OWN,
        overrides,
    )
