"""The recipe schema: a recipe's hyperparameters, as every rank receives them.

``recipes/<name>.yaml`` holds one :class:`Recipe` plus named presets. The model and the
data are tagged unions: ``model.arch`` (``resnet`` or ``transformer``) and ``data.kind``
(``images`` or ``parallel_text``) pick the schema, and may be left out for ResNet on
images. Every model forbids unknown keys (see :mod:`jobs.config_io`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from jobs.config_io import NAME_PATTERN, StrictModel


def _tagged(field: str, default: str):
    """A discriminator that reads ``field`` and falls back to ``default`` (recipes may omit it)."""

    def pick(value: Any) -> str:
        if isinstance(value, dict):
            return value.get(field, default)
        return getattr(value, field, default)

    return Discriminator(pick)


class ModelConfig(StrictModel):
    """ResNet v1.5 (``arch: resnet``)."""

    arch: Literal["resnet"] = "resnet"
    layers: list[int] = Field(default_factory=lambda: [3, 4, 6, 3], min_length=1, max_length=4)
    width: int = Field(64, gt=0)
    num_classes: int = Field(1000, gt=1)
    small_stem: bool = False  # 3x3 stem without max-pool, for small images
    zero_init_residual: bool = True


class TransformerConfig(StrictModel):
    """Transformer encoder-decoder (``arch: transformer``); defaults are Transformer-big."""

    arch: Literal["transformer"]
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


ModelSpec = Annotated[
    Annotated[ModelConfig, Tag("resnet")] | Annotated[TransformerConfig, Tag("transformer")],
    _tagged("arch", "resnet"),
]


class TokenizerConfig(StrictModel):
    model: str | None = Field(None, description="a sentencepiece .model; None: train one into the data folder")
    vocab_size: int = Field(33708, gt=8)
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = Field(1.0, gt=0, le=1)


class TextDataConfig(StrictModel):
    """Parallel text (``kind: parallel_text``): ``train.en``/``train.de`` or ``train.tsv``, plus valid/test."""

    kind: Literal["parallel_text"]
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


class DataConfig(StrictModel):
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


DataSpec = Annotated[
    Annotated[DataConfig, Tag("images")] | Annotated[TextDataConfig, Tag("parallel_text")],
    _tagged("kind", "images"),
]


class OptimConfig(StrictModel):
    name: Literal["sgd", "lars", "adam", "auto"] = "auto"  # auto: LARS above lars_above_batch
    lars_above_batch: int = Field(8192, gt=0)
    lr_per_256: float = Field(0.256, gt=0)
    base_lr: float | None = Field(None, gt=0, description="pins the LR instead of scaling it")
    end_lr: float = Field(0.0001, ge=0)
    momentum: float = Field(0.875, ge=0, lt=1)
    weight_decay: float = Field(5e-05, ge=0)
    nesterov: bool = False
    lars_eta: float = Field(0.001, gt=0)
    bn_bias_weight_decay: bool = False
    betas: tuple[float, float] = (0.9, 0.98)  # Adam
    eps: float = Field(1e-9, gt=0)  # Adam


class ScheduleConfig(StrictModel):
    warmup_epochs: float | None = Field(None, ge=0, description="None: derived from the batch")
    warmup_steps: int | None = Field(None, ge=0, description="warmup in optimizer steps; wins over epochs")
    decay: Literal["cosine", "poly", "inverse_sqrt"] = "poly"
    poly_power: float = Field(2.0, gt=0)


class TrainConfig(StrictModel):
    batch_size: int = Field(256, gt=0, description="per rank")
    global_batch_size: int | None = Field(None, gt=0, description="pins it; must divide by ranks")
    epochs: int = Field(40, gt=0)
    update_freq: int = Field(1, gt=0, description="micro-batches per optimizer step (gradient accumulation)")
    tokens_per_update: int | None = Field(None, gt=0, description="keeps the effective batch: derives update_freq")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    precision: Literal["fp32", "tf32", "amp-bf16", "amp-fp16"] = "amp-bf16"
    channels_last: bool = True
    compile: bool = False
    seed: int = 1
    log_every: int = Field(20, gt=0, description="steps between progress lines and metrics")
    stop_check_every: int = Field(10, gt=0, description="optimizer steps between the ranks' stop votes "
                                  "(a signal stops training within this many steps, twice that on GPUs)")
    checkpoint_every: int = Field(1, ge=0, description="epochs between checkpoints; 0 disables")
    keep_checkpoints: int = Field(2, gt=0)
    cpu_threads: int | None = Field(None, gt=0, description="torch threads per rank on CPU")


class EvalConfig(StrictModel):
    every_epochs: int = Field(1, gt=0)
    start_epoch: int = Field(0, ge=0, description="first epoch (0-based) that is evaluated")
    batch_size: int | None = Field(None, gt=0)
    target: float = Field(0.759, gt=0, description="top-1 in (0, 1], or BLEU")
    beam_size: int = Field(1, gt=0, description="translation: 1 is greedy")
    max_len_a: float = Field(1.2, ge=0, description="translation: decode at most a * source length + b")
    max_len_b: int = Field(10, ge=0)
    bleu_lowercase: bool = False
    bleu_tokenize: str = "13a"


class MlperfConfig(StrictModel):
    benchmark: str = "resnet"
    ruleset: str = "3.1.0"
    division: Literal["closed", "open"] = "closed"
    org: str = "podrun"
    status: Literal["cloud", "onprem", "preview", "research"] = "research"


class Recipe(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    model: ModelSpec = Field(default_factory=ModelConfig)
    data: DataSpec = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    mlperf: MlperfConfig = Field(default_factory=MlperfConfig)
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        images = self.model.arch == "resnet"
        if images != (self.data.kind == "images"):
            raise ValueError(f"model.arch {self.model.arch} does not go with data.kind {self.data.kind}")
        if images and self.eval.target > 1:
            raise ValueError(f"eval.target {self.eval.target}: top-1 accuracy is at most 1")
        return self

