"""From a trained model to a device: BN folding, the one export pipeline (an ONNX writer, a .pte
writer, one report), int8 per runtime (onnxruntime QDQ, PT2E for XNNPACK, QAT), latency, and the
browser demo that runs the int8 files with onnxruntime-web."""
