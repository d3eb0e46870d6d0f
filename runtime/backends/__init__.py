"""Inference backends: ONNX Runtime (CPU, CUDA, TensorRT execution providers) and TensorRT via cuda-python."""
