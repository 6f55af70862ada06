"""SSDLite object detection on MobileNetV2 (Sandler et al. 2018, section 6.2)."""

from mobilenets.detection.anchors import box_shapes, default_boxes, ssd_scales
from mobilenets.detection.boxes import (
    assign_batch,
    assign_targets,
    decode,
    encode,
    match,
    postprocess,
)
from mobilenets.detection.coco_eval import coco_results, evaluate_coco
from mobilenets.detection.datasets import CocoDetection, VocDetection, collate_detections
from mobilenets.detection.loss import DetectionLoss, MultiBoxLoss
from mobilenets.detection.model import (
    ExtraLayer,
    PredictionHead,
    SSDLite,
    copy_backbone,
    create_detector,
    load_classifier,
    load_detector,
)
from mobilenets.detection.spec import (
    DetectionConfig,
    DetectionSpec,
    FeatureMap,
    get_detector_entry,
    list_detectors,
    resolve_detection,
    resolve_detection_config,
)
from mobilenets.detection.synthetic import make_synthetic_coco
from mobilenets.detection.transforms import eval_transform, train_transform

__all__ = [
    "CocoDetection",
    "DetectionLoss",
    "MultiBoxLoss",
    "VocDetection",
    "assign_batch",
    "assign_targets",
    "coco_results",
    "collate_detections",
    "decode",
    "encode",
    "eval_transform",
    "evaluate_coco",
    "make_synthetic_coco",
    "match",
    "postprocess",
    "train_transform",
    "DetectionConfig",
    "DetectionSpec",
    "ExtraLayer",
    "FeatureMap",
    "PredictionHead",
    "SSDLite",
    "box_shapes",
    "copy_backbone",
    "create_detector",
    "default_boxes",
    "get_detector_entry",
    "list_detectors",
    "load_classifier",
    "load_detector",
    "resolve_detection",
    "resolve_detection_config",
    "ssd_scales",
]
