"""Exporter: gradient-emitting ONNX graph, batched masked-forward graph, TensorRT engines."""
