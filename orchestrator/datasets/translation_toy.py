"""The translation toy corpus (``podrun data translation-toy``): two artificial languages, no download.

:func:`write_translation_toy` writes a parallel folder (see :mod:`jobs.data.parallel_text`)
from two artificial languages: the target side maps every word through a fixed bilingual
lexicon *and* reorders it (adjectives after the noun, verb at the end of the clause,
prepositions after their noun phrase), so a model has to learn alignment, not copying. The
files are named ``.en``/``.de`` so the transformer recipe's defaults read them unchanged.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from jobs.contract.errors import DataError
from jobs.data.config import TextDataConfig, TokenizerConfig
from jobs.data.parallel_text import train_tokenizer

TOY_VOCAB_SIZE = 320  # the tiny preset's tokenizer.vocab_size: every toy word becomes one piece


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
