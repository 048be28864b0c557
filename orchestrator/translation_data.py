"""Parallel text on disk: the translation toy corpus, reading splits, training the tokenizer.

A parallel data set is a folder holding, for each split (``train``, ``valid``, ``test``),
either two line-aligned files ``<split>.<src>`` and ``<split>.<tgt>`` (``format: pair``)
or one ``<split>.tsv`` with ``source<TAB>target`` lines (``format: tsv``).

:func:`write_translation_toy` writes such a folder from two artificial languages (no
download): the target side maps every word through a fixed bilingual lexicon *and*
reorders it (adjectives after the noun, verb at the end of the clause, prepositions after
their noun phrase), so a model has to learn alignment, not copying. The files are named
``.en``/``.de`` so the transformer recipe's defaults read them unchanged.

:func:`train_tokenizer` trains one joint sentencepiece model on both sides of the
training split (shared source/target embeddings need one vocabulary). Training is
deterministic for a given corpus and :class:`TokenizerConfig`.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.config import TextDataConfig, TokenizerConfig
from orchestrator.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
TOY_VOCAB_SIZE = 320  # the tiny preset's tokenizer.vocab_size: every toy word becomes one piece
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


# --------------------------------------------------------------------------- toy corpus

SPLITS = ("train", "valid", "test")
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
CATEGORY_SIZES = {"det": 4, "noun": 48, "adj": 16, "verb": 24, "prep": 6}


def _pseudo_words(rng: random.Random, count: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(*syllables)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def toy_lexicon(seed: int) -> dict[str, list[tuple[str, str]]]:
    """Per word class, the (source word, target word) pairs of the toy languages."""
    rng = random.Random(seed)
    taken: set[str] = set()
    lexicon = {}
    for category, size in CATEGORY_SIZES.items():
        source = _pseudo_words(rng, size, (1, 2) if category in ("det", "prep") else (2, 3), taken)
        target = [word + "x" for word in _pseudo_words(rng, size, (1, 3), taken)]  # "x": no overlap
        lexicon[category] = list(zip(source, target))
    return lexicon


def _noun_phrase(rng: random.Random, lexicon: dict[str, list[tuple[str, str]]]) -> tuple[list[str], list[str]]:
    """Source ``det adj* noun``; target ``det noun adj*`` with the adjectives in reverse order."""
    det, noun = rng.choice(lexicon["det"]), rng.choice(lexicon["noun"])
    adjectives = [rng.choice(lexicon["adj"]) for _ in range(rng.choice((0, 0, 1, 1, 2)))]
    source = [det[0]] + [adj[0] for adj in adjectives] + [noun[0]]
    target = [det[1], noun[1]] + [adj[1] for adj in reversed(adjectives)]
    return source, target


def toy_pair(rng: random.Random, lexicon: dict[str, list[tuple[str, str]]]) -> tuple[str, str]:
    """One sentence pair: source ``S V O [P NP]``; target ``S' O' [NP' P'] V'`` (verb-final)."""
    subject, obj = _noun_phrase(rng, lexicon), _noun_phrase(rng, lexicon)
    verb = rng.choice(lexicon["verb"])
    source, target = subject[0] + [verb[0]] + obj[0], subject[1] + obj[1]
    if rng.random() < 0.4:
        prep, phrase = rng.choice(lexicon["prep"]), _noun_phrase(rng, lexicon)
        source += [prep[0]] + phrase[0]
        target += phrase[1] + [prep[1]]
    return " ".join(source), " ".join(target + [verb[1]])


def _prepare_toy_output(out: Path, langs: tuple[str, str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; choose a folder for the data set")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty; pass overwrite=True (--overwrite) or choose an empty folder")
        for split in SPLITS:  # only what this writer writes; the rest is the user's
            for lang in langs:
                (out / f"{split}.{lang}").unlink(missing_ok=True)
        for model in out.glob("spm-*"):
            model.unlink()
        shutil.rmtree(out / "cache", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def write_translation_toy(
    out: Path,
    *,
    train_pairs: int = 20000,
    valid_pairs: int = 500,
    test_pairs: int = 500,
    seed: int = 0,
    vocab_size: int | None = TOY_VOCAB_SIZE,
    source_lang: str = "en",
    target_lang: str = "de",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the toy parallel corpus (``train``/``valid``/``test`` ``.en``/``.de``) under ``out``.

    With ``vocab_size`` set, also trains ``spm-<vocab_size>.model`` so every rank of a run
    finds the tokenizer ready. Returns a summary: ``path``, pair counts per split, the
    lexicon size and the tokenizer path (or None).

    Raises:
        DataError: ``out`` is not empty (and ``overwrite`` is false) or a count is invalid.
    """
    if train_pairs < 1 or valid_pairs < 1 or test_pairs < 0:
        raise DataError(f"need train_pairs >= 1, valid_pairs >= 1 and test_pairs >= 0 (got {train_pairs}, "
                        f"{valid_pairs}, {test_pairs})")
    out = Path(out)
    _prepare_toy_output(out, (source_lang, target_lang), overwrite)
    lexicon = toy_lexicon(seed)
    rng = random.Random(seed + 1)
    counts = {"train": train_pairs, "valid": valid_pairs, "test": test_pairs}
    for split, count in counts.items():
        pairs = [toy_pair(rng, lexicon) for _ in range(count)]
        for side, lang in enumerate((source_lang, target_lang)):
            (out / f"{split}.{lang}").write_text("".join(pair[side] + "\n" for pair in pairs), encoding="utf-8")
    model = None
    if vocab_size:
        data = TextDataConfig(kind="parallel_text", source_lang=source_lang, target_lang=target_lang)
        model = train_tokenizer(out, TokenizerConfig(vocab_size=vocab_size), data)
    words = sum(len(pairs) for pairs in lexicon.values())
    return {"path": str(out), **counts, "lexicon_words": words, "tokenizer": str(model) if model else None}
