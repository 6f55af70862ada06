"""From a trained model to a device: BN folding, ONNX, ExecuTorch, int8, latency, and the
browser demo that runs the int8 files with onnxruntime-web."""
