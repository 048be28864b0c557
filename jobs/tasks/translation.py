"""The translation task (``task: translation``): Transformer on parallel text, BLEU.

Plugs into the shared loop of :mod:`jobs.train` as a :class:`jobs.tasks.base.Task`. Try it
on the toy corpus::

    podrun data translation-toy data/translation-toy
    podrun launch recipes/jobs/transformer-tiny.yaml

* Loss: label-smoothed cross-entropy (``train.label_smoothing``), padding ignored, the mean
  over the micro-batch's target tokens; throughput counts target tokens (``tok``).
* Eval: greedy (``eval.beam_size: 1``) or beam search over this rank's shard of the valid
  split, at most ``max_len_a * source length + max_len_b`` tokens, detokenised by
  sentencepiece; hypotheses are gathered from every rank and scored once with sacrebleu
  (``eval.bleu_lowercase``, ``eval.bleu_tokenize``), the same BLEU (0-100) on every rank.
  Rank 0 appends each score with sacrebleu's signature (which records the case setting)
  to ``<job_dir>/bleu.jsonl`` and writes the hypotheses next to it.
* MLPerf: :func:`log_transformer_hparams` logs the keys of the transformer benchmark of
  ruleset 0.6.0. That ruleset's checker reads the old ``:::MLL <time> <key>: {...}`` line
  format, so check a log with :func:`check_compliance`, which converts it first.
* Export (``podrun export``): two ONNX graphs, the encoder (``src -> memory``) and one
  decoder step (``prefix, memory, src -> log_probs`` of the next token). The step re-reads
  the whole prefix (no key/value cache) and the search loop stays in the caller.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlperf_logging.mllog import constants as C

from jobs.contract.job import Derivation, ResolvedJob
from jobs.contract.recipe import Recipe
from jobs.data.config import TextDataConfig
from jobs.data.parallel_text import BOS_ID, EOS_ID, PAD_ID, split_paths
from jobs.models.config import TransformerConfig
from jobs.tasks.base import OnnxGraph, Task

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from jobs.data.text import TextBatch, TextLoader
    from jobs.rank.mlperf_log import MlperfLogger

LENGTH_PENALTY = 0.6  # beam search: NVIDIA's MLPerf transformer (fairseq --lenpen 0.6)
V06_SUBMISSION_POC_NAME = "submission_poc_name"  # required by ruleset 0.6.0 only
V06_SUBMISSION_ENTRY = "submission_entry"
MAX_SEQUENCE_LENGTH = "max_sequence_length"  # transformer.yaml of 0.6.0 and 0.7.0; not in mllog.constants


class Translation(Task):
    """Transformer on parallel text (see the module docstring)."""

    Model = TransformerConfig
    Data = TextDataConfig
    metric, metric_label, metric_digits, unit = "bleu", "BLEU", 2, "tok"
    varying_shapes = True  # token-bucketed batches: compile for dynamic shapes at once
    input_names = ("src", "tgt_in")
    dynamic_dims = "all"  # batch and sequence length

    @classmethod
    def data_paths(cls, data: TextDataConfig, root: Path) -> dict[str, list[Path]]:
        return {"train": split_paths(root, data.train_split, data), "val": split_paths(root, data.valid_split, data)}

    @classmethod
    def data_hint(cls, data: TextDataConfig, root: Path) -> str:
        return f"create a toy corpus with 'podrun data translation-toy {root}'"

    @classmethod
    def fixed_batch(cls, recipe: Recipe) -> tuple[int, str]:
        return recipe.data.max_tokens, "tokens"

    @classmethod
    def model_for(cls, recipe: Recipe) -> nn.Module:
        from jobs.models.transformer import build_transformer

        return build_transformer(recipe.model, recipe.data.tokenizer.vocab_size, pad_id=PAD_ID)

    @classmethod
    def model_from_weights(cls, model_config: dict[str, Any], state_dict: dict[str, Any]) -> nn.Module:
        from jobs.models.transformer import build_transformer

        vocab = state_dict["embed.weight"].shape[0]
        model = build_transformer(TransformerConfig(**model_config), vocab_size=vocab, pad_id=PAD_ID)
        model.load_state_dict(state_dict)
        return model.eval()

    @classmethod
    def model_inputs(cls, batch: TextBatch) -> dict[str, torch.Tensor]:
        return {"src": batch.src, "tgt_in": batch.tgt_in}

    @classmethod
    def onnx_graphs(cls, model: nn.Module, inputs: tuple[np.ndarray, ...], model_config: dict[str, Any]
                    ) -> list[OnnxGraph]:
        import torch
        from torch.export import Dim

        from jobs.models.transformer import TransformerDecoderStep, TransformerEncoder

        encoder, step = TransformerEncoder(model).eval(), TransformerDecoderStep(model).eval()
        src, tgt_in = (torch.from_numpy(array) for array in inputs)
        limit = model_config["max_positions"]
        batch, src_len, prefix_len = Dim("batch"), Dim("src_len", max=limit), Dim("prefix_len", max=limit)
        with torch.no_grad():
            memory = encoder(src)
        return [
            OnnxGraph("-encoder", encoder, (src,), ["src"], ["memory"], ({0: batch, 1: src_len},),
                      {"src": inputs[0]}),
            OnnxGraph("-decoder_step", step, (tgt_in, memory, src), ["prefix", "memory", "src"], ["log_probs"],
                      ({0: batch, 1: prefix_len}, {0: batch, 1: src_len}, {0: batch, 1: src_len}),
                      {"prefix": inputs[1], "memory": memory.numpy(), "src": inputs[0]}),
        ]

    # ------------------------------------------------------------------ the runtime

    def __init__(self, job: ResolvedJob, device: torch.device, autocast: Any) -> None:
        super().__init__(job, device, autocast)
        self.data_dir = Path(job.data_dir)
        self._sp = None

    def tokenizer(self, rank: int | None = None):
        """The sentencepiece model (loaded once; rank 0 trains it if the data folder lacks it)."""
        from jobs.data.text import load_tokenizer

        if self._sp is None:
            rank = _rank() if rank is None else rank
            self._sp = load_tokenizer(self.data_dir, self.recipe.data, rank)
        return self._sp

    def build_model(self) -> nn.Module:
        from jobs.models.transformer import build_transformer

        vocab = self.tokenizer().get_piece_size()
        return build_transformer(self.recipe.model, vocab_size=vocab, pad_id=PAD_ID)

    def build_loaders(self, rank: int, world_size: int) -> tuple[TextLoader, TextLoader]:
        from jobs.data.text import build_text_loader

        data, sp = self.recipe.data, self.tokenizer(rank)
        common = dict(data_dir=self.data_dir, rank=rank, world_size=world_size, seed=self.recipe.train.seed,
                      device=self.device, max_positions=self.recipe.model.max_positions)
        train = build_text_loader(data, data.train_split, sp, **common)
        val = build_text_loader(data, data.valid_split, sp, max_sentences=self.recipe.eval.batch_size, **common)
        return train, val

    def train_step_loss(self, model: nn.Module, batch: TextBatch) -> tuple[torch.Tensor, int]:
        with self.autocast():
            logits = model(batch.src, batch.tgt_in)
        loss = label_smoothed_loss(logits, batch.tgt_out, self.recipe.train.label_smoothing, batch.ntokens)
        return loss, batch.ntokens

    # ------------------------------------------------------------------ evaluation

    def translate(self, model: nn.Module, batch: TextBatch) -> list[str]:
        """Detokenised translations of one batch (greedy or beam search, as the recipe says)."""
        import torch

        from jobs.models.transformer import beam_search, greedy_decode

        cfg = self.recipe.eval
        max_len = (cfg.max_len_a * batch.src_lengths.float()).long() + cfg.max_len_b
        with torch.no_grad(), self.autocast():
            if cfg.beam_size == 1:
                tokens = greedy_decode(model, batch.src, max_len, bos=BOS_ID, eos=EOS_ID)
            else:
                tokens = beam_search(model, batch.src, max_len, beam=cfg.beam_size, bos=BOS_ID, eos=EOS_ID,
                                     length_penalty=LENGTH_PENALTY)
        return [self.tokenizer().decode(row) for row in tokens]

    def evaluate(self, model: nn.Module, loader: TextLoader, epoch: int) -> float:
        import torch

        was_training = model.training
        model.eval()
        mine = []
        with torch.no_grad():
            for batch in loader.epoch(epoch):
                mine.extend(zip(batch.ids.tolist(), self.translate(model, batch)))
        model.train(was_training)
        hypotheses = gather_hypotheses(mine, loader.samples)
        score = corpus_bleu(hypotheses, loader.references, self.recipe.eval.bleu_lowercase,
                            self.recipe.eval.bleu_tokenize)
        if _rank() == 0:
            self._record(epoch, score, hypotheses)
        return score.score

    def _record(self, epoch: int, score: Any, hypotheses: list[str]) -> None:
        """``bleu.jsonl`` (score, sacrebleu signature) and the hypotheses, in the job folder."""
        folder = Path(self.job.job_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"valid-epoch{epoch + 1}.hyp").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        line = {"epoch": epoch + 1, "bleu": round(score.score, 4), "signature": str(score.signature),
                "lowercase": self.recipe.eval.bleu_lowercase, "tokenize": self.recipe.eval.bleu_tokenize,
                "beam_size": self.recipe.eval.beam_size}
        with open(folder / "bleu.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    # ------------------------------------------------------------------ MLPerf

    def log_hparams(self, mllog: MlperfLogger, train: TextLoader, val: TextLoader) -> None:
        derived = self.job.derived
        updates_per_epoch = math.ceil(len(train) / derived.update_freq)
        warmup = self.recipe.schedule.warmup_steps
        warmup = warmup if warmup is not None else int(derived.warmup_epochs * updates_per_epoch)
        log_transformer_hparams(mllog, self.recipe, derived, train_samples=train.samples,
                                eval_samples=val.samples, warmup_steps=warmup)


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float, ntokens: int) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over the ``ntokens`` real target tokens (padding ignored), in fp32."""
    import torch.nn.functional as F

    loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=PAD_ID,
                           label_smoothing=smoothing, reduction="sum")
    return loss / max(ntokens, 1)


def _rank() -> int:
    import torch.distributed as dist

    from jobs.rank.dist import horovod

    hvd = horovod()
    if hvd is not None:
        return hvd.rank()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_hypotheses(mine: list[tuple[int, str]], samples: int) -> list[str]:
    """Every rank's ``(pair id, hypothesis)`` merged into one list in split order.

    Raises:
        RuntimeError: some pair was translated by no rank or by two (a sharding bug).
    """
    from jobs.rank.dist import all_gather_object

    gathered: list[list[tuple[int, str]]] = all_gather_object(mine)
    merged = dict(pair for part in gathered for pair in part)
    count = sum(len(part) for part in gathered)
    if len(merged) != samples or count != samples:
        raise RuntimeError(f"evaluation covered {len(merged)} distinct of {samples} pairs ({count} translated)")
    return [merged[index] for index in range(samples)]


def corpus_bleu(hypotheses: list[str], references: list[str], lowercase: bool, tokenize: str) -> Any:
    """sacrebleu's corpus BLEU (a ``BLEUScore``: ``.score`` 0-100, ``.signature``)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(lowercase=lowercase, tokenize=tokenize)
    score = metric.corpus_score(hypotheses, [references])
    score.signature = metric.get_signature()
    return score


# --------------------------------------------------------------------------- MLPerf logging


def log_transformer_hparams(
    logger: MlperfLogger,
    recipe: Recipe,
    derived: Derivation,
    *,
    train_samples: int,
    eval_samples: int,
    warmup_steps: int,
) -> None:
    """Log the hyperparameters of MLPerf's transformer benchmark (rulesets 0.6.0 and 0.7.0).

    ``global_batch_size`` is in tokens per optimizer step (all ranks, accumulation included),
    as in the reference. Ruleset 0.6.0 also wants ``submission_poc_name``/``submission_entry``,
    which :func:`jobs.rank.mlperf_log.log_submission` does not write: they are logged here.
    """
    if recipe.mlperf.ruleset.startswith("0.6"):
        logger.event(V06_SUBMISSION_POC_NAME, recipe.mlperf.org)
        logger.event(V06_SUBMISSION_ENTRY, recipe.name)
    logger.event(C.SEED, recipe.train.seed)
    logger.event(C.GLOBAL_BATCH_SIZE, derived.global_batch_size)
    logger.event(C.GRADIENT_ACCUMULATION_STEPS, derived.update_freq)
    logger.event(C.OPT_NAME, derived.optimizer)
    logger.event(C.OPT_BASE_LR, derived.lr)
    logger.event(C.OPT_LR_WARMUP_STEPS, warmup_steps)
    logger.event(MAX_SEQUENCE_LENGTH, recipe.data.max_len, metadata={"method": "discard"})
    logger.event(C.OPT_ADAM_BETA_1, recipe.optim.betas[0])
    logger.event(C.OPT_ADAM_BETA_2, recipe.optim.betas[1])
    logger.event(C.OPT_ADAM_EPSILON, recipe.optim.eps)
    logger.event(C.TRAIN_SAMPLES, train_samples)
    logger.event(C.EVAL_SAMPLES, eval_samples)


def v06_lines(text: str) -> list[str]:
    """``:::MLLOG {json}`` lines rewritten in ruleset 0.6.0's ``:::MLL <seconds> <key>: {json}`` format."""
    lines = []
    for line in text.splitlines():
        if ":::MLLOG " not in line:
            continue
        record = json.loads(line.split(":::MLLOG ", 1)[1])
        body = json.dumps({"value": record.get("value"), "metadata": record.get("metadata") or {}})
        lines.append(f":::MLL {record['time_ms'] / 1000:.3f} {record['key']}: {body}")
    return lines


def check_compliance(log_path: Path, ruleset: str = "0.6.0") -> tuple[bool, str]:
    """Run the MLPerf compliance checker on a podrun log; converts it first for ruleset 0.6.x.

    Returns ``(passed, output)`` like :func:`jobs.rank.mlperf_log.run_compliance_checker`.
    """
    from jobs.rank.mlperf_log import run_compliance_checker

    if not ruleset.startswith("0.6"):
        return run_compliance_checker(Path(log_path), ruleset)
    with tempfile.TemporaryDirectory(prefix="podrun-mllog-v06-") as tmp:
        converted = Path(tmp) / "mlperf.v06.log"
        converted.write_text("\n".join(v06_lines(Path(log_path).read_text())) + "\n")
        return run_compliance_checker(converted, ruleset)
