"""Checkpoints: read files safely, find the weights, detect the architecture, build the model.

* :func:`load_checkpoint` -- file -> :class:`LoadedModel` (model in eval mode + :class:`CheckpointInfo`);
* :func:`model_from_arch` -- registered architecture name -> the same, with random weights;
* :func:`load_model` -- either of the two, as ``odexport inspect`` accepts;
* :func:`read_checkpoint_file`, :func:`extract_state_dict`, :func:`find_submodel` (the backbone of an
  mmdet detector), :func:`detect_architecture` -- the steps.
"""

from odexport.checkpoint.detect import Detection, detect_architecture
from odexport.checkpoint.info import CheckpointInfo, LoadedModel
from odexport.checkpoint.loader import load_checkpoint, load_model, model_from_arch
from odexport.checkpoint.reader import RawCheckpoint, read_checkpoint_file, sha256_of_file
from odexport.checkpoint.state_dict import ExtractedWeights, extract_state_dict, strip_wrapper_prefixes
from odexport.checkpoint.submodel import SubModel, find_submodel

__all__ = [
    "CheckpointInfo",
    "Detection",
    "ExtractedWeights",
    "LoadedModel",
    "RawCheckpoint",
    "SubModel",
    "detect_architecture",
    "extract_state_dict",
    "find_submodel",
    "load_checkpoint",
    "load_model",
    "model_from_arch",
    "read_checkpoint_file",
    "sha256_of_file",
    "strip_wrapper_prefixes",
]
