"""SSDLite object detection (Sandler et al. 2018, section 6.2): training, COCO evaluation,
prediction, export (ONNX and ExecuTorch) and int8."""
