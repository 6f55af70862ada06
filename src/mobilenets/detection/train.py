"""Training and COCO evaluation of SSDLite detectors, as plain functions.

:class:`DetectionTrainConfig` holds every setting; :func:`fit_detector` runs a whole job into an
output folder with the guarantees of classification training (:mod:`mobilenets.train`, whose
optimizer, schedule, EMA, precision, torchrun and checkpoint helpers it reuses):

    train_config.json        the resolved config, detection config, preprocessing and classes
    metrics.jsonl            one JSON line per epoch: train losses and COCO metrics on val
    last.safetensors         weights after the last epoch (EMA weights when EMA is on)
    best.safetensors         weights of the epoch with the best validation AP
    checkpoints/state.pt     everything --resume needs (torch.load(weights_only=True) reads it)
    eval.json                the final COCO metrics

Files are written atomically; the state is also saved mid-epoch. Data order and augmentation
are fixed by (seed, epoch, index), so a resumed run ends with the same weights and metrics as
one never interrupted. A NaN or infinite loss stops the run before the step is applied.

``--data`` specs (:data:`DATA_HELP`):

- ``synthetic-shapes[:N]``: :func:`~mobilenets.detection.synthetic.make_synthetic_coco` with N
  training images (default 1000) and N/5 validation images, 128 px, seed 0, written once into
  ``$MOBILENETS_DATA`` or ``~/.cache/mobilenets/data``;
- ``coco:DIR``: ``DIR/{train,val}`` (or ``train2017``/``val2017``) image folders with
  ``DIR/annotations/instances_{train,val}[2017].json``; or
  ``coco:TRAIN_IMAGES,TRAIN_JSON,VAL_IMAGES,VAL_JSON``;
- ``voc:ROOT``: one Pascal VOC year (``ROOT/Annotations``, ``JPEGImages``,
  ``ImageSets/Main``), trained on ``trainval`` and evaluated on ``test`` when ``test.txt``
  exists, else ``train`` and ``val``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from tqdm import tqdm

from mobilenets import train as training
from mobilenets.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochSampler,
    Preprocessing,
    data_dirs,
    open_image,
)
from mobilenets.detection.boxes import assign_batch, postprocess
from mobilenets.detection.coco_eval import evaluate_coco
from mobilenets.detection.datasets import CocoDetection, VocDetection, collate_detections
from mobilenets.detection.loss import CLASSIFICATION_LOSSES, MultiBoxLoss
from mobilenets.detection.model import SSDLite, create_detector, load_detector
from mobilenets.detection.spec import DetectionConfig, resolve_detection_config
from mobilenets.detection.synthetic import make_synthetic_coco
from mobilenets.detection.transforms import DetectionTransform, eval_transform, train_transform
from mobilenets.errors import MobileNetsError
from mobilenets.train import Distributed
from mobilenets.weights import read_metadata, save_weights

AUGMENTS = ("ssd", "flip")
SYNTHETIC_SHAPES = "synthetic-shapes"
SYNTHETIC_SHAPES_TRAIN = 1000
SYNTHETIC_SHAPES_SIDE = 128
DATA_HELP = (
    f"{SYNTHETIC_SHAPES}[:N] (generated, N training images), coco:DIR (DIR/train, DIR/val, "
    "DIR/annotations/instances_{train,val}.json; 2017 names too), "
    "coco:TRAIN_IMAGES,TRAIN_JSON,VAL_IMAGES,VAL_JSON, or voc:ROOT (a VOC year folder)"
)
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
SCORE_THRESHOLD = 0.01  # COCO evaluation keeps low-scoring detections: they only add recall


# --- Configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectionTrainConfig:
    """Every detection training setting. Stored beside the outputs and in every checkpoint.

    The optimizer, schedule and EMA fields mean what they mean in
    :class:`mobilenets.train.TrainConfig` and go through the same helpers. AdamW at 0.003 with a
    cosine schedule is the default because it is what learned fastest from scratch in the
    short CPU runs of ``benchmarks/detection_synthetic.py`` (which sets its own epochs, batch,
    augmentation and matching); TF's SSDLite config trains with RMSProp at 0.004 for 200k steps
    of 24 images.
    """

    data: str = f"{SYNTHETIC_SHAPES}:{SYNTHETIC_SHAPES_TRAIN}"
    model: str = "ssdlite_mobilenet_v2"
    alpha: float | None = None  # None: the registered detector's
    resolution: int | None = None  # None: the registered detector's (320, the paper's)
    epochs: int = 20
    batch_size: int = 32  # per process
    optimizer: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # on conv weights; BN and biases are not decayed
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1.0
    schedule: str = "cosine"
    lr_decay: float = 0.98  # per epoch, for the exponential schedule
    warmup_epochs: float = 1.0
    ema_decay: float = 0.0  # 0 turns weight EMA off
    loss: str = "softmax"  # softmax with 3:1 hard negative mining (SSD), or focal
    neg_pos_ratio: float = 3.0
    match_iou: float = 0.5  # SSD section 2.2: a default box is positive at IoU >= 0.5
    augment: str = "ssd"  # ssd: SSD paper section 2.2; flip: horizontal flips only
    backbone_weights: str | None = None  # torchvision, timm, keras or a classification file
    amp: str = "auto"
    channels_last: bool = True
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 0  # steps between mid-epoch state saves; 0: time-based only
    checkpoint_minutes: float = 10.0
    device: str = "auto"

    def __post_init__(self) -> None:
        choices = {
            "optimizer": training.OPTIMIZERS, "schedule": training.SCHEDULES,
            "amp": training.AMPS, "loss": CLASSIFICATION_LOSSES, "augment": AUGMENTS,
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MobileNetsError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        for name in ("epochs", "batch_size", "lr", "neg_pos_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise MobileNetsError(f"{name} must be positive, got {value!r}")
        for name in ("momentum", "rmsprop_decay", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise MobileNetsError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("lr_decay", "match_iou"):
            if not 0 < getattr(self, name) <= 1:
                raise MobileNetsError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        for name in ("weight_decay", "warmup_epochs", "workers", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise MobileNetsError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> DetectionTrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict) -> DetectionTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MobileNetsError(f"unknown detection training settings {unknown}; allowed: "
                                  f"{', '.join(sorted(known))}")  # fmt: skip
        return cls(**data)


# --- Data ---------------------------------------------------------------------------------------


@dataclass
class DetectionData:
    """A dataset's splits (None where not asked for) and its classes."""

    name: str
    train: CocoDetection | VocDetection | None
    val: CocoDetection | VocDetection | None
    class_names: tuple[str, ...]  # class_names[0] is background
    category_ids: tuple[int, ...]  # the id each label is written as in COCO results


def synthetic_shapes_root(count: int) -> Path:
    """The folder of ``synthetic-shapes:count``, generated on first use. Every process (of a
    torchrun job, or separate runs) may generate it: each writes a private folder and renames
    it into place, and the one that loses the race uses the winner's identical files."""
    root = data_dirs()[0] / f"{SYNTHETIC_SHAPES}-{count}-{SYNTHETIC_SHAPES_SIDE}px-seed0"
    if (root / "annotations" / "instances_val.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)  # mkdtemp makes 0700; the cache is an ordinary folder
    try:
        make_synthetic_coco(temporary, num_train=count, num_val=max(1, count // 5),
                            image_size=SYNTHETIC_SHAPES_SIDE, seed=0)  # fmt: skip
        os.replace(temporary, root)
    except OSError as error:
        if not (root / "annotations" / "instances_val.json").is_file():
            raise MobileNetsError(
                f"cannot write {SYNTHETIC_SHAPES} data into {str(root.parent)!r}: {error} (set "
                "$MOBILENETS_DATA to a writable folder)"
            ) from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return root


def _coco_folder(root: Path) -> dict[str, tuple[Path, Path]]:
    for year in ("", "2017"):
        found = {
            split: (root / f"{split}{year}", root / "annotations" / f"instances_{split}{year}.json")
            for split in ("train", "val")
        }
        if all(images.is_dir() and labels.is_file() for images, labels in found.values()):
            return found
    raise MobileNetsError(
        f"coco:{root} needs train/ and val/ image folders with "
        "annotations/instances_train.json and annotations/instances_val.json (or the 2017 "
        "names: train2017/, annotations/instances_train2017.json, ...)"
    )


def load_detection_data(spec: str, splits: tuple[str, ...] = ("train", "val")) -> DetectionData:
    """The datasets a ``--data`` spec names (see :data:`DATA_HELP`), without transforms. Only
    the ``splits`` asked for are read: evaluation need not parse a large training file."""
    if not isinstance(spec, str) or not spec:
        raise MobileNetsError(f"--data must be one of: {DATA_HELP}; got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == SYNTHETIC_SHAPES:
        count = SYNTHETIC_SHAPES_TRAIN
        if rest:
            try:
                count = int(rest)
            except ValueError:
                count = 0
            if count < 1:
                raise MobileNetsError(
                    f"{SYNTHETIC_SHAPES}:N takes a positive number of training images, got {rest!r}"
                )
        root = synthetic_shapes_root(count)
        paths = {s: (root / s, root / "annotations" / f"instances_{s}.json") for s in splits}
    elif kind == "coco" and rest:
        parts = rest.split(",")
        if len(parts) == 4:
            paths = {"train": (Path(parts[0]), Path(parts[1])),
                     "val": (Path(parts[2]), Path(parts[3]))}  # fmt: skip
        elif len(parts) == 1:
            paths = _coco_folder(Path(rest))
        else:
            raise MobileNetsError(
                f"coco: takes DIR or TRAIN_IMAGES,TRAIN_JSON,VAL_IMAGES,VAL_JSON, got {rest!r}"
            )
        for images, _ in paths.values():
            if not images.is_dir():
                raise MobileNetsError(f"coco: image folder {str(images)!r} does not exist")
    elif kind == "voc" and rest:
        root = Path(rest)
        main = root / "ImageSets" / "Main"
        names = {"train": "trainval", "val": "test"}
        if not (main / "test.txt").is_file():
            names = {"train": "train", "val": "val"}
        found = {split: VocDetection(root, names[split]) for split in splits}
        first = next(iter(found.values()))
        return DetectionData(spec, found.get("train"), found.get("val"), first.class_names,
                             first.category_ids)  # fmt: skip
    else:
        raise MobileNetsError(f"--data must be one of: {DATA_HELP}; got {spec!r}")
    found = {split: CocoDetection(*paths[split]) for split in splits}
    first = next(iter(found.values()))
    for split, dataset in found.items():
        if dataset.category_ids != first.category_ids:
            raise MobileNetsError(
                f"--data {spec}: the {split} split has categories {list(dataset.category_ids[1:])}"
                f", the other split {list(first.category_ids[1:])}"
            )
    return DetectionData(spec, found.get("train"), found.get("val"), first.class_names,
                         first.category_ids)  # fmt: skip


def detection_preprocessing(resolution: int, backbone_weights: str | None) -> Preprocessing:
    """The input normalization: the one the backbone weights were trained with (Keras: [-1, 1]),
    ImageNet's mean and std otherwise. Images are resized straight to the square input."""
    from mobilenets.pretrained import default_preprocessing, looks_like_source

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if isinstance(backbone_weights, str) and looks_like_source(backbone_weights):
        published = default_preprocessing(backbone_weights.partition(":")[0], resolution)
        mean, std = published.mean, published.std
    return Preprocessing(resolution, tuple(mean), tuple(std))


def make_train_transform(preprocessing: Preprocessing, augment: str) -> DetectionTransform:
    if augment == "ssd":
        return train_transform(preprocessing)
    # Flips only: objects keep their size, which a short run from scratch learns faster.
    return DetectionTransform([T.RandomHorizontalFlip(p=0.5), eval_transform(preprocessing)])


# --- Scores -------------------------------------------------------------------------------------


def class_scores(cls_logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-anchor class probabilities ``[..., C]``, column 0 background.

    Softmax for the softmax loss. The focal loss trains each object class as its own sigmoid
    and never the background logit, so there: sigmoid of each object class, and background
    ``max(0, 1 - sum)``.
    """
    if loss == "softmax":
        return torch.softmax(cls_logits.float(), dim=-1)
    objects = torch.sigmoid(cls_logits[..., 1:].float())
    background = (1 - objects.sum(dim=-1, keepdim=True)).clamp(min=0)
    return torch.cat([background, objects], dim=-1)


def score_logits(cls_logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Logits whose softmax (what :func:`postprocess` takes) gives :func:`class_scores`: the
    identity for softmax; for focal, the log of the scores (when their object classes sum to
    more than 1, softmax renormalizes them, which keeps their order)."""
    if loss == "softmax":
        return cls_logits
    return class_scores(cls_logits, loss).clamp(min=1e-12).log()


# --- Evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def detect_batch(model: SSDLite, images: torch.Tensor, sizes, *, loss: str = "softmax",
                 score_threshold: float = SCORE_THRESHOLD, dtype=None,
                 channels_last: bool = False) -> list[dict]:  # fmt: skip
    """Detections of one batch of model inputs, boxes in pixels of each image's ``(height,
    width)`` in ``sizes``."""
    device = next(model.parameters()).device
    images = training.to_device(images, device, channels_last)
    with training.autocast(device, dtype):
        out = model(images)
    logits = score_logits(out["cls_logits"].float(), loss)
    return postprocess(logits, out["box_regression"].float(), model.anchors(),
                       score_threshold=score_threshold, image_size=list(sizes))  # fmt: skip


@torch.no_grad()
def evaluate_detector(
    model: SSDLite,
    dataset: CocoDetection | VocDetection,
    *,
    loss: str = "softmax",
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    distributed: Distributed | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """COCO metrics (AP, AP50, AP75, APs, APm, APl, AR100) of ``model`` on ``dataset``, whose
    transform must be the evaluation one. With several processes each detects its share and
    every process scores the gathered detections."""
    device = torch.device(device)
    distributed = distributed or Distributed()
    if len(dataset) == 0:
        raise MobileNetsError("evaluation data is empty")
    if dataset.num_classes != model.num_classes:
        raise MobileNetsError(
            f"{model.name} has {model.num_classes} classes (background included), the data "
            f"{dataset.num_classes}: {', '.join(dataset.class_names[1:])}"
        )
    was_training = model.training
    model.eval()
    sampler = EpochSampler(len(dataset), shuffle=False, batch_size=batch_size,
                           rank=distributed.rank, world_size=distributed.world_size)  # fmt: skip
    config = DetectionTrainConfig(batch_size=batch_size, workers=workers)
    loader = training.make_loader(dataset, sampler, config, device, collate_detections)
    detections = {}
    try:
        for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
            found = detect_batch(model, images, [t["orig_size"] for t in targets], loss=loss,
                                 dtype=dtype, channels_last=channels_last)  # fmt: skip
            for target, result in zip(targets, found, strict=True):
                detections[target["image_id"]] = {k: v.cpu() for k, v in result.items()}
    finally:
        model.train(was_training)
    if distributed.enabled:
        shares = [None] * distributed.world_size
        dist.all_gather_object(shares, detections)
        detections = {key: value for share in shares for key, value in share.items()}
    return evaluate_coco(dataset.coco, detections, dataset.category_ids)


# --- One epoch ----------------------------------------------------------------------------------


@dataclass
class DetectionEpochState:
    """Running sums of the epoch in progress: saved with mid-epoch checkpoints."""

    batch: int = 0
    loss_sum: float = 0.0
    box_sum: float = 0.0
    cls_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0


class AssignTargets:
    """A collate function that also matches: stacked images, the targets, and each image's
    anchor labels ``[N, A]`` and box offsets ``[N, A, 4]`` (:func:`assign_batch`). Run in the
    loader's workers, the matching overlaps the training step instead of preceding it."""

    def __init__(self, anchors: torch.Tensor, iou_threshold: float = 0.5) -> None:
        self.anchors, self.iou_threshold = anchors.detach().cpu(), iou_threshold

    def __call__(self, batch):
        images, targets = collate_detections(batch)
        return images, targets, *assign_batch(self.anchors, targets, self.iou_threshold)


def detection_loss(criterion: MultiBoxLoss):
    """The ``loss_fn`` of :func:`mobilenets.train.train_epoch` for the batches of
    :class:`AssignTargets`; the epoch also adds up the box and class parts
    (:class:`DetectionEpochState`)."""

    def loss_fn(model, batch, trainer: training.Trainer):
        images, targets, labels, box_targets = batch
        device = trainer.device
        images = training.to_device(images, device, trainer.config.channels_last)
        with training.autocast(device, trainer.dtype):
            out = model(images)
        loss = criterion(out["cls_logits"], out["box_regression"],
                         labels.to(device, non_blocking=True),
                         box_targets.to(device, non_blocking=True))  # fmt: skip
        count = len(targets)
        sums = {"box_sum": loss.box.detach() * count, "cls_sum": loss.cls.detach() * count}
        return loss.total, count, sums

    return loss_fn


# --- A whole run --------------------------------------------------------------------------------


@dataclass
class DetectionFitResult:
    out: Path
    best_ap: float
    final: dict[str, float]  # COCO metrics of the shipped weights on the val split
    epochs: int
    history: list[dict]
    main_process: bool = True  # False on the other ranks of a torchrun job


def detection_config_for(config: DetectionTrainConfig, num_classes: int) -> DetectionConfig:
    return resolve_detection_config(config.model, alpha=config.alpha, resolution=config.resolution,
                                    num_classes=num_classes)  # fmt: skip


def saved_detection_config(run: dict) -> DetectionTrainConfig:
    """The config of a saved detection run; a classification run is refused."""
    if "detection_config" not in run:
        raise MobileNetsError("--resume: the folder holds a classification run; continue it "
                              "with mobilenets train --resume")  # fmt: skip
    return DetectionTrainConfig.from_dict(run["train_config"])


def fit_detector(config: DetectionTrainConfig | None, out: str | os.PathLike, *,
                 resume: bool = False, placement: dict | None = None, progress: bool = True,
                 log=print) -> DetectionFitResult:  # fmt: skip
    """Train ``config`` into the folder ``out``. With ``resume``, continue the run saved there
    with its own config (``config`` may then be None; if given, it must be the saved one), on
    the device and workers that ``placement`` may change (see ``training.PLACEMENT``)."""
    started = time.monotonic()
    out = Path(out)
    state_path = out / training.STATE_FILE
    saved = None
    config, saved = training.open_run(
        out, config, resume, saved_detection_config, "fit_detector", "DetectionTrainConfig",
        placement,
    )  # fmt: skip
    distributed = training.init_distributed(config.device)
    device = training.pick_device(config.device)
    if distributed.enabled and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    dtype = training.autocast_dtype(config.amp, device)
    torch.manual_seed(config.seed)

    data = load_detection_data(config.data)
    detection_config = detection_config_for(config, len(data.class_names))
    if saved is not None:
        # The saved config, which has the padding and BN eps of the backbone weights.
        saved_detection = DetectionConfig.from_dict(saved["run"]["detection_config"])
        if (saved_detection.name, saved_detection.num_classes) != (
            detection_config.name,
            detection_config.num_classes,
        ):
            raise MobileNetsError(
                f"--resume: the data {config.data!r} gives {detection_config.name} with "
                f"{detection_config.num_classes} classes; the saved run has "
                f"{saved_detection.name} with {saved_detection.num_classes} classes"
            )
        model = SSDLite(saved_detection)
    elif config.backbone_weights is not None:
        model = create_detector(detection_config, backbone_weights=config.backbone_weights,
                                progress=progress and distributed.main)  # fmt: skip
    else:
        model = SSDLite(detection_config)
    detection_config = model.config
    preprocessing = detection_preprocessing(detection_config.resolution, config.backbone_weights)
    data.train.transform = make_train_transform(preprocessing, config.augment)
    data.val.transform = eval_transform(preprocessing)
    run = {
        "train_config": config.to_dict(), "detection_config": detection_config.to_dict(),
        "preprocessing": preprocessing.to_dict(), "classes": list(data.class_names),
        "category_ids": list(data.category_ids), "world_size": distributed.world_size,
    }  # fmt: skip

    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    anchors = model.anchors()
    criterion = MultiBoxLoss(neg_pos_ratio=config.neg_pos_ratio, classification=config.loss)
    loss_fn = detection_loss(criterion)
    collate = AssignTargets(anchors, config.match_iou)
    trainer, train_sampler = training.make_trainer(
        model, len(data.train), config, device, dtype, distributed
    )
    steps_per_epoch = train_sampler.num_batches()
    ema = trainer.ema

    epoch, epoch_state, history, best_ap = 0, DetectionEpochState(), [], -1.0
    if saved is not None:
        training.restore_trainer(model, trainer, saved)
        epoch, history, best_ap = saved["epoch"], saved["history"], saved["best_ap"]
        epoch_state = DetectionEpochState(**saved["epoch_state"])
        if distributed.main:
            log(f"resuming {str(out)!r} at epoch {epoch + 1}, batch {epoch_state.batch}"
                f"{training.moved(saved['run']['train_config'], config)}")  # fmt: skip

    if distributed.main:
        out.mkdir(parents=True, exist_ok=True)
        training.write_json(out / "train_config.json", run)
    trained = model
    if distributed.enabled:
        trained = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
    shipped = ema.module if ema is not None else model  # the weights we evaluate and save

    def snapshot() -> dict:
        return {
            "run": run, **training.trainer_state(model, trainer), "epoch": epoch,
            "epoch_state": dataclasses.asdict(epoch_state), "history": history,
            "best_ap": best_ap,
        }  # fmt: skip

    saver = training.StateSaver(state_path, snapshot, trainer, steps_per_epoch)

    def evaluate() -> dict[str, float]:
        return evaluate_detector(
            shipped, data.val, loss=config.loss, batch_size=config.batch_size,
            workers=config.workers, device=device, dtype=dtype,
            channels_last=config.channels_last, distributed=distributed,
        )  # fmt: skip

    metrics = None
    while epoch < config.epochs:
        train_sampler.epoch, train_sampler.start_batch = epoch, epoch_state.batch
        loader = training.make_loader(data.train, train_sampler, config, device, collate)
        training.train_epoch(trained, loader, trainer, epoch_state, loss_fn=loss_fn,
                             on_step=saver, progress=progress and distributed.main,
                             description=f"epoch {epoch + 1}/{config.epochs}")  # fmt: skip
        evaluated = time.perf_counter()
        metrics = evaluate()
        row = epoch_metrics(epoch, trainer, epoch_state, metrics, distributed)
        row["eval_seconds"] = time.perf_counter() - evaluated
        history.append(row)
        epoch += 1
        epoch_state = DetectionEpochState()
        if distributed.main:
            log(format_metrics(row, config.epochs))
            with open(out / "metrics.jsonl", "a") as handle:  # appended rows survive a crash
                handle.write(json.dumps(row) + "\n")
            metadata = training.weights_metadata(
                run, {"epoch": epoch, "metrics": row, "category_ids": run["category_ids"]}
            )
            save_weights(shipped, out / "last.safetensors", metadata)
            if metrics["AP"] > best_ap:
                best_ap = metrics["AP"]
                save_weights(shipped, out / "best.safetensors", metadata)
            saver.write()
    if metrics is None:  # resumed a finished run: evaluate what it left
        metrics = evaluate()
    if distributed.main:
        training.write_json(out / "eval.json", {"data": config.data, **metrics})
        log(f"done in {time.monotonic() - started:.0f} s")
    if distributed.enabled:
        dist.barrier()
    return DetectionFitResult(out, max(best_ap, metrics["AP"]), metrics, epoch, history,
                              distributed.main)  # fmt: skip


def epoch_metrics(epoch: int, trainer: training.Trainer, state: DetectionEpochState,
                  metrics: dict[str, float], distributed: Distributed) -> dict:  # fmt: skip
    sums = torch.tensor([state.seen, state.loss_sum, state.box_sum, state.cls_sum],
                        dtype=torch.float64)  # fmt: skip
    seen, loss, box, cls = training.all_sum(sums, distributed).tolist()
    return {
        "epoch": epoch + 1, "step": trainer.step, "lr": trainer.optimizer.param_groups[0]["lr"],
        "train_loss": loss / seen, "train_box_loss": box / seen, "train_cls_loss": cls / seen,
        **{f"val_{name}": metrics[name] for name in METRIC_NAMES},
        "images_per_s": seen / max(state.seconds, 1e-9), "epoch_seconds": state.seconds,
    }  # fmt: skip


def format_metrics(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} (box "
        f"{row['train_box_loss']:.4f}, cls {row['train_cls_loss']:.4f}), val AP "
        f"{row['val_AP']:.3f}, AP50 {row['val_AP50']:.3f}, {row['images_per_s']:.1f} images/s"
    )


# --- Checkpoints --------------------------------------------------------------------------------


@dataclass
class DetectionCheckpoint:
    """A trained detector with what reading its inputs and naming its outputs needs."""

    model: SSDLite
    classes: tuple[str, ...]  # classes[0] is background
    category_ids: tuple[int, ...]
    preprocessing: Preprocessing
    path: Path
    loss: str = "softmax"  # how its class logits become scores (see class_scores)
    train_config: dict | None = None
    metrics: dict | None = field(default=None)


def load_detection_checkpoint(path: str | os.PathLike) -> DetectionCheckpoint:
    """A detector checkpoint (best/last.safetensors of a run, or the run folder: best)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if path.suffix == ".pt":
        raise MobileNetsError(
            f"{str(path)!r} is a training state for --resume; give best.safetensors or "
            "last.safetensors from the run folder"
        )
    model = load_detector(path)
    prefix = training.METADATA_PREFIX
    try:
        values = {
            key[len(prefix) :]: json.loads(value)
            for key, value in read_metadata(path).items()
            if key.startswith(prefix)
        }
        classes = tuple(values["classes"])
        preprocessing = Preprocessing.from_dict(values["preprocessing"])
        category_ids = tuple(values.get("category_ids") or range(len(classes)))
    except (KeyError, TypeError, ValueError) as error:
        raise MobileNetsError(
            f"{str(path)!r} holds detector weights but no class names or preprocessing (it was "
            "not written by mobilenets detect train)"
        ) from error
    if len(classes) != model.num_classes:
        raise MobileNetsError(
            f"{str(path)!r} names {len(classes)} classes for a {model.num_classes}-class model"
        )
    train_config = values.get("train_config")
    loss = (train_config or {}).get("loss", "softmax")
    return DetectionCheckpoint(model.eval(), classes, category_ids, preprocessing, path, loss,
                               train_config, values.get("metrics"))  # fmt: skip


def evaluate_checkpoint(checkpoint: DetectionCheckpoint, data: str, *, batch_size: int = 32,
                        workers: int = 0, device: str = "auto",
                        progress: bool = False) -> dict[str, float]:  # fmt: skip
    """COCO metrics of a checkpoint on the validation split of ``data``."""
    dataset = load_detection_data(data, splits=("val",)).val
    if tuple(dataset.class_names) != checkpoint.classes:
        raise MobileNetsError(
            f"{str(checkpoint.path)!r} detects {', '.join(checkpoint.classes[1:])}; --data "
            f"{data} has {', '.join(dataset.class_names[1:])}"
        )
    dataset.transform = eval_transform(checkpoint.preprocessing)
    device = training.pick_device(device)
    model = checkpoint.model.to(device)
    return evaluate_detector(model, dataset, loss=checkpoint.loss, batch_size=batch_size,
                             workers=workers, device=device, progress=progress)  # fmt: skip


def detect_image(checkpoint: DetectionCheckpoint, path: str | os.PathLike, *,
                 score_threshold: float = 0.3, device: str = "cpu"):  # fmt: skip
    """The image at ``path`` (PIL, RGB) and its detections: pixel boxes, scores, labels."""
    if not 0 <= score_threshold < 1:
        raise MobileNetsError(f"score threshold must be in [0, 1), got {score_threshold!r}")
    image = open_image(path).convert("RGB")
    width, height = image.size
    empty = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY",
                                          canvas_size=(height, width)),
        "labels": torch.zeros(0, dtype=torch.int64),
    }  # fmt: skip
    inputs, _ = eval_transform(checkpoint.preprocessing)(image, empty)
    model = checkpoint.model.to(training.pick_device(device))
    (found,) = detect_batch(model, inputs[None], [(height, width)], loss=checkpoint.loss,
                            score_threshold=score_threshold)  # fmt: skip
    return image, {key: value.cpu() for key, value in found.items()}


def draw_detections(image, detections: dict, classes: tuple[str, ...]) -> torch.Tensor:
    """The image as a uint8 ``[3, H, W]`` tensor with each box, its class name and score drawn
    (torchvision's draw_bounding_boxes), one colour per class."""
    from torchvision.transforms.functional import pil_to_tensor
    from torchvision.utils import draw_bounding_boxes

    pixels = pil_to_tensor(image)
    if len(detections["boxes"]) == 0:
        return pixels
    palette = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white"]
    labels = detections["labels"].tolist()
    captions = [
        f"{classes[label]} {score:.2f}"
        for label, score in zip(labels, detections["scores"].tolist(), strict=True)
    ]
    width = max(1, round(max(image.size) / 160))
    return draw_bounding_boxes(pixels, detections["boxes"], captions,
                               colors=[palette[label % len(palette)] for label in labels],
                               width=width)  # fmt: skip
