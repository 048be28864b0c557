"""Parallel text on disk: reading a split and training the sentencepiece tokenizer.

A parallel data set is a folder holding, for each split (``train``, ``valid``, ``test``),
either two line-aligned files ``<split>.<src>`` and ``<split>.<tgt>`` (``format: pair``)
or one ``<split>.tsv`` with ``source<TAB>target`` lines (``format: tsv``).

:func:`train_tokenizer` trains one joint sentencepiece model on both sides of the
training split (shared source/target embeddings need one vocabulary). Training is
deterministic for a given corpus and :class:`TokenizerConfig`. Rank 0 trains it when the
data folder lacks it (:func:`jobs.data.text.load_tokenizer`); ``podrun data
translation-toy`` trains it up front.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jobs.contract.errors import DataError
from jobs.data.config import TextDataConfig, TokenizerConfig

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPM_INPUT_SENTENCES = 5_000_000  # sentencepiece samples this many lines of a large corpus
SPM_SEED = 12345

# --------------------------------------------------------------------------- reading


def split_paths(data_dir: Path, split: str, cfg: TextDataConfig) -> list[Path]:
    """The file(s) holding ``split``: ``[src, tgt]`` for ``pair``, ``[tsv]`` for ``tsv``."""
    if cfg.format == "tsv":
        return [Path(data_dir) / f"{split}.tsv"]
    return [Path(data_dir) / f"{split}.{cfg.source_lang}", Path(data_dir) / f"{split}.{cfg.target_lang}"]


def read_parallel(data_dir: Path, split: str, cfg: TextDataConfig) -> tuple[list[str], list[str]]:
    """Source and target lines of ``split`` (stripped, same length).

    Raises:
        DataError: a file is missing, the two sides differ in length, or a TSV line lacks a tab.
    """
    paths = split_paths(data_dir, split, cfg)
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DataError(f"parallel text not found: {', '.join(missing)}; create a toy corpus with "
                        f"'podrun data translation-toy {data_dir}' or point data.dataset at your data")
    if cfg.format == "tsv":
        return _read_tsv(paths[0])
    source, target = (_read_lines(path) for path in paths)
    if len(source) != len(target):
        raise DataError(f"{paths[0]} has {len(source)} lines but {paths[1]} has {len(target)}: "
                        "the two sides of a split must be line-aligned")
    return source, target


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\r\n").strip() for line in handle]


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    source, target = [], []
    for number, line in enumerate(_read_lines(path), start=1):
        left, tab, right = line.partition("\t")
        if not tab:
            raise DataError(f"{path}:{number}: expected 'source<TAB>target'")
        source.append(left.strip())
        target.append(right.strip())
    return source, target


# --------------------------------------------------------------------------- tokenizer


def tokenizer_path(data_dir: Path, cfg: TokenizerConfig) -> Path:
    """Where the sentencepiece model is read from: ``cfg.model``, else ``<data_dir>/spm-<vocab>.model``."""
    if cfg.model:
        path = Path(cfg.model).expanduser()
        return path if path.is_absolute() else Path(data_dir) / path
    kind = "" if cfg.model_type == "bpe" else f"{cfg.model_type}-"
    return Path(data_dir) / f"spm-{kind}{cfg.vocab_size}.model"


def train_tokenizer(data_dir: Path, cfg: TokenizerConfig, data: TextDataConfig | None = None) -> Path:
    """Train a joint sentencepiece model on both sides of the training split; return its path.

    The model is written to a temporary file and renamed into place, so a reader never sees
    half a model. Ids: pad 0, unk 1, bos 2, eos 3. ``vocab_size`` is an upper bound: a small
    corpus gets a smaller vocabulary instead of an error.

    Raises:
        DataError: the training split is missing or empty.
    """
    import sentencepiece as spm

    data = data or TextDataConfig(kind="parallel_text")
    source, target = read_parallel(Path(data_dir), data.train_split, data)
    lines = [line for line in source + target if line]
    if not lines:
        raise DataError(f"{data_dir}: the {data.train_split} split is empty; cannot train a tokenizer")
    out = tokenizer_path(data_dir, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(SPM_SEED)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".spm-") as tmp:
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=cfg.vocab_size,
            model_type=cfg.model_type, character_coverage=cfg.character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, hard_vocab_limit=False,
            input_sentence_size=SPM_INPUT_SENTENCES, shuffle_input_sentence=True,
            num_threads=1, minloglevel=2,
        )  # fmt: skip
        os.replace(prefix.with_suffix(".vocab"), out.with_suffix(".vocab"))
        os.replace(prefix.with_suffix(".model"), out)
    return out

