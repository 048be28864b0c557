"""The ``model:`` sections of the built-in recipes (pydantic only: resolving a job imports no torch).

:class:`ResNetConfig` for the image-classification task, :class:`TransformerConfig` for
translation; the task files (:mod:`jobs.tasks`) name them as their ``Model``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jobs.contract.config_io import StrictModel


class ResNetConfig(StrictModel):
    """ResNet v1.5 (``arch: resnet``)."""

    arch: Literal["resnet"] = "resnet"
    layers: list[int] = Field(default_factory=lambda: [3, 4, 6, 3], min_length=1, max_length=4)
    width: int = Field(64, gt=0)
    num_classes: int = Field(1000, gt=1)
    small_stem: bool = False  # 3x3 stem without max-pool, for small images
    zero_init_residual: bool = True


class TransformerConfig(StrictModel):
    """Transformer encoder-decoder (``arch: transformer``); defaults are Transformer-big."""

    arch: Literal["transformer"] = "transformer"
    d_model: int = Field(1024, gt=0)
    ffn_dim: int = Field(4096, gt=0)
    heads: int = Field(16, gt=0)
    encoder_layers: int = Field(6, gt=0)
    decoder_layers: int = Field(6, gt=0)
    dropout: float = Field(0.3, ge=0, lt=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    activation_dropout: float = Field(0.1, ge=0, lt=1)
    norm: Literal["pre", "post"] = "pre"
    share_embeddings: bool = True
    max_positions: int = Field(1024, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must divide by heads {self.heads}")
        return self
