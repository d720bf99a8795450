"""Sequential (out-of-core) compression: Hugging Face causal LMs compressed one decoder block at a time,
reading the weights from the safetensors shards, so memory holds one block and the calibration
activations instead of the model (``torchslim compress --model hf:DIR --recipe R --sequential``)."""

from torchslim.sequential.runner import Layout, SequentialRun, check_sequential, compress_sequential, model_layout

__all__ = ["Layout", "SequentialRun", "check_sequential", "compress_sequential", "model_layout"]
