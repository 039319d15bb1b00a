"""Weights in and out: our checkpoints, Lightning checkpoints, HF directories (or their hub ids),
model-zoo .pkl."""

from ..modeling.d2_format import read_d2_pickle
from .d2 import convert_d2_state_dict
from .hf import convert_hf_state_dict, hf_config_to_ours, read_hf_checkpoint
from .hub import resolve_weights
from .io import init_from_weights, load_model, load_state_strict, read_weights, save_model

__all__ = [
    "convert_d2_state_dict",
    "convert_hf_state_dict",
    "hf_config_to_ours",
    "init_from_weights",
    "load_model",
    "load_state_strict",
    "read_d2_pickle",
    "read_hf_checkpoint",
    "read_weights",
    "resolve_weights",
    "save_model",
]
