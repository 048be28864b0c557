"""The ``data:`` sections of the built-in recipes (pydantic only: resolving a job imports no torch).

:class:`ImageDataConfig` for images in ImageNet folder layout, :class:`TextDataConfig` for
parallel text; the task files (:mod:`jobs.tasks`) name them as their ``Data``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from jobs.contract.config_io import StrictModel


class ImageDataConfig(StrictModel):
    """Images in ImageNet folder layout (``kind: images``)."""

    kind: Literal["images"] = "images"
    dataset: str = "imagenet"  # folder under the profile's data_root, or an absolute path
    backend: Literal["dali", "torch", "synthetic"] = "dali"
    dali_device: Literal["auto", "cpu", "gpu"] = "auto"
    image_size: int = Field(224, gt=0)
    val_resize: int = Field(256, gt=0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    flip: bool = True
    mean: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    std: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)
    workers: int = Field(4, gt=0, description="DALI threads or DataLoader workers per rank")
    synthetic_samples: int = Field(2048, gt=0, description="samples per epoch in synthetic mode")


class TokenizerConfig(StrictModel):
    model: str | None = Field(None, description="a sentencepiece .model; None: train one into the data folder")
    vocab_size: int = Field(33708, gt=8)
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = Field(1.0, gt=0, le=1)


class TextDataConfig(StrictModel):
    """Parallel text (``kind: parallel_text``): ``train.en``/``train.de`` or ``train.tsv``, plus valid/test."""

    kind: Literal["parallel_text"] = "parallel_text"
    dataset: str = "wmt14_en_de"  # folder under the profile's data_root, or an absolute path
    source_lang: str = "en"
    target_lang: str = "de"
    format: Literal["pair", "tsv"] = "pair"
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    max_tokens: int = Field(5120, gt=0, description="tokens per batch per rank")
    max_len: int = Field(256, gt=0, description="longer pairs are skipped in training")
    workers: int = Field(1, ge=0)
