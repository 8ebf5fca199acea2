"""Freezing a trained checkpoint into the bundle the service loads (ONNX, TensorRT).

scrapscan-export (model_export/cli.py) runs model_export.export.export_bundle; the
graph it exports is model_export/graph.py, each file is checked by model_export/parity.py.
"""


class ExportError(RuntimeError):
    """The export cannot go on; the message names the file."""
