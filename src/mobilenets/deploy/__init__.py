"""From a trained model to a device: BN folding, ONNX, ExecuTorch, int8, latency."""
