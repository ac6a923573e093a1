"""ONNX: torch.onnx.export(dynamo=True), checked with onnx.checker, metadata attached."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from torchgraft.export.model import ExportInputs, dynamic_batch, quieter_loggers, with_embedding

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
EMBEDDING_NAME = "embedding"  # second output: what torchgraft's unfamiliar score is made from
ONNX_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime")


def export_onnx(inputs: ExportInputs, path: Path, embedding: bool = True) -> None:
    """model.onnx: uint8 `images` (batch, C, H, W) in, float32 `probabilities` (batch,
    classes) out and, with `embedding`, the float32 `embedding` (batch, D) that torchgraft's
    Predictor scores unfamiliar inputs with."""
    model = with_embedding(inputs.model, inputs.example) if embedding else inputs.model
    outputs = [OUTPUT_NAME, EMBEDDING_NAME] if embedding else [OUTPUT_NAME]
    with quieter_loggers(*ONNX_LOGGERS):
        program = torch.onnx.export(
            model,
            (inputs.example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes=dynamic_batch(),
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None; dynamo=True always returns one
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    attach_metadata(path, inputs.metadata)


def attach_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store `metadata` in the file's metadata_props, then validate it with onnx.checker."""
    import onnx

    model = onnx.load(str(path))
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
