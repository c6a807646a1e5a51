"""wav2vec 2.0 model: config, components, pre-training and CTC models."""

from earful.model.config import ModelConfig, load_model_config, model_presets
from earful.model.wav2vec2 import (
    BackboneOutput,
    PretrainOutput,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
    batch_invariant,
    compile_blocks,
    count_parameters,
    uses_cuda_graphs,
)

__all__ = [
    "BackboneOutput",
    "ModelConfig",
    "PretrainOutput",
    "Wav2Vec2ForCTC",
    "Wav2Vec2ForPreTraining",
    "Wav2Vec2Model",
    "batch_invariant",
    "compile_blocks",
    "count_parameters",
    "load_model_config",
    "model_presets",
    "uses_cuda_graphs",
]
