"""Export a compressed model to ONNX or a ``torch.export`` program, verified against torch outputs.

Export sits above the techniques: it lowers their swapped modules (int8, int4) to operators the target
runtime executes.
"""

from torchslim.export.formats import export_onnx, export_pt2
from torchslim.export.inputs import ExampleInputs

__all__ = ["ExampleInputs", "export_onnx", "export_pt2"]
