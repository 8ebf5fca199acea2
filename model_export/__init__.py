"""Freezing a trained checkpoint into the bundle the service loads (ONNX, TensorRT).

Filled by the model-bundle issue; see DESIGN.md, "Model bundle".
"""
