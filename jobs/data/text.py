"""Parallel text for the transformer recipe: tokenizer, encoded splits, token-bucketed sharded batches.

The task calls :func:`load_tokenizer` and :func:`build_text_loader` on every rank after
``torch.distributed`` is initialised::

    sp = load_tokenizer(data_dir, cfg.data, rank)            # rank 0 trains it if missing
    train = build_text_loader(cfg.data, "train", sp, data_dir=..., rank=r, world_size=w,
                              seed=1, device=device)
    for batch in train.epoch(epoch, skip=steps_done_in_epoch):
        batch.src, batch.tgt_in, batch.tgt_out, batch.src_lengths, batch.ntokens, batch.ids

Batching and sharding (every rank computes the same plan; no communication):

* Pairs are sorted by their longer side (source or target, EOS included); a batch is a run
  of consecutive pairs whose padded size ``pairs x longest`` stays within ``max_tokens``
  (and ``max_sentences`` if set). The batch *boundaries* depend only on the sorted
  lengths, so they are computed once and every epoch has the same number of batches.
* Batches are split in two (largest first) until their count divides by ``world_size``;
  a split never drops a pair. Consecutive runs of ``world_size`` batches form a step
  group of similar lengths; at each step every rank takes one batch of the same group, so
  ranks do similar work per step and ``len(loader)`` is ``batches / world_size`` on every rank.
* Training epochs shuffle pairs of equal length (which batch they land in) and the order
  of the step groups and of the ranks inside a group, from an RNG seeded by (seed, epoch):
  every pair is in exactly one batch of exactly one rank per epoch. ``skip`` just starts
  later in that list. Validation keeps the sorted order.
* Training pairs longer than ``max_len`` tokens on either side are dropped (MLPerf's
  ``discard``); validation keeps every pair (the source is cut to the model's positions).

Encoded splits are cached as ``<data_dir>/cache/<split>-<key>.npz`` (rank 0 writes it while
the others wait at a barrier), keyed by the tokenizer and the text files' size and mtime.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jobs.contract.errors import DataError
from jobs.data.config import TextDataConfig
from jobs.data.parallel_text import BOS_ID, EOS_ID, PAD_ID, read_parallel, split_paths, tokenizer_path, train_tokenizer
from jobs.rank.dist import barrier

SHUFFLE_STREAM = 7  # keeps the batching RNG apart from other seeded streams


def derive_seed(*parts: int) -> int:
    words = [part % (1 << 64) for part in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(data_dir: Path, cfg: TextDataConfig, rank: int):
    """The sentencepiece processor for ``cfg.tokenizer``; rank 0 trains it first if it is missing.

    Raises:
        DataError: an explicit ``tokenizer.model`` is missing, or another rank cannot see the
            model rank 0 wrote (the data folder must be shared by all nodes).
    """
    import sentencepiece as spm

    path = tokenizer_path(data_dir, cfg.tokenizer)
    if cfg.tokenizer.model and not path.is_file():
        raise DataError(f"tokenizer.model {path} not found: fix the path, or unset it to train one "
                        f"into {data_dir}")
    if rank == 0 and not path.is_file():
        print(f"[data] training sentencepiece ({cfg.tokenizer.model_type}, vocab {cfg.tokenizer.vocab_size})"
              f" into {path}", flush=True)
        train_tokenizer(data_dir, cfg.tokenizer, cfg)
    barrier()
    if not path.is_file():
        raise DataError(f"rank {rank}: tokenizer {path} not found after rank 0 trained it: the data folder "
                        "must be on a file system every node shares")
    return spm.SentencePieceProcessor(model_file=str(path))


# --------------------------------------------------------------------------- encoded splits


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids of one split, flat: pair ``i`` is ``src[src_offsets[i]:src_offsets[i + 1]]``."""

    src: np.ndarray
    src_offsets: np.ndarray
    tgt: np.ndarray
    tgt_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)


def _flatten(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(seq) + 1 for seq in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.full(int(offsets[-1]), EOS_ID, dtype=np.int32)  # every sequence ends with EOS
    for start, seq in zip(offsets[:-1], sequences):
        flat[start:start + len(seq)] = seq
    return flat, offsets


def encode_pairs(sp, source: list[str], target: list[str]) -> EncodedSplit:
    """Encode both sides with ``sp``, appending EOS to each sequence."""
    src, src_offsets = _flatten(sp.encode(source))
    tgt, tgt_offsets = _flatten(sp.encode(target))
    return EncodedSplit(src, src_offsets, tgt, tgt_offsets)


def cache_path(data_dir: Path, split: str, cfg: TextDataConfig) -> Path:
    """The cache file of ``split``: its name hashes the tokenizer and the text files' size and mtime."""
    digest = hashlib.sha1()
    digest.update(tokenizer_path(data_dir, cfg.tokenizer).read_bytes())
    for path in split_paths(data_dir, split, cfg):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Path(data_dir) / "cache" / f"{split}-{digest.hexdigest()[:16]}.npz"


def load_split(data_dir: Path, split: str, cfg: TextDataConfig, sp, rank: int) -> tuple[EncodedSplit, list[str]]:
    """The encoded pairs of ``split`` and its raw target lines (BLEU references)."""
    source, target = read_parallel(data_dir, split, cfg)
    path = cache_path(data_dir, split, cfg)
    encoded = None
    if rank == 0:
        encoded = _read_cache(path, len(source))
        if encoded is None:
            encoded = encode_pairs(sp, source, target)
            _write_cache(path, encoded)
    barrier()
    if encoded is None:
        encoded = _read_cache(path, len(source))
    if encoded is None:  # no shared or no writable data folder
        encoded = encode_pairs(sp, source, target)
    return encoded, target


def _read_cache(path: Path, pairs: int) -> EncodedSplit | None:
    try:
        with np.load(path) as data:
            encoded = EncodedSplit(*(data[name] for name in ("src", "src_offsets", "tgt", "tgt_offsets")))
    except (OSError, KeyError, ValueError):
        return None
    return encoded if len(encoded) == pairs else None


def _write_cache(path: Path, encoded: EncodedSplit) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, src=encoded.src, src_offsets=encoded.src_offsets, tgt=encoded.tgt,
                     tgt_offsets=encoded.tgt_offsets)
        os.replace(handle.name, path)
    except OSError:  # a read-only data folder: every rank encodes for itself
        pass


# --------------------------------------------------------------------------- batching


@dataclass
class TextBatch:
    """One micro-batch on the loader's device; ``ids`` (CPU) are the pairs' line numbers in the split."""

    src: Tensor  # [B, S] source ids + EOS, right-padded
    tgt_in: Tensor  # [B, T] BOS + target ids
    tgt_out: Tensor  # [B, T] target ids + EOS
    src_lengths: Tensor  # [B]
    ntokens: int  # real target tokens (tgt_out without padding)
    ids: Tensor


def batch_bounds(lengths: np.ndarray, max_tokens: int, max_sentences: int | None) -> list[tuple[int, int]]:
    """``[start, end)`` runs over ``lengths`` (sorted ascending) with ``count x longest <= max_tokens``."""
    bounds, start, longest = [], 0, 0
    for index, length in enumerate(lengths.tolist()):
        longest_if_added = max(longest, length)
        count = index - start + 1
        full = count * longest_if_added > max_tokens or (max_sentences is not None and count > max_sentences)
        if index > start and full:
            bounds.append((start, index))
            start, longest_if_added = index, length
        longest = longest_if_added
    if start < len(lengths):
        bounds.append((start, len(lengths)))
    return bounds


def divisible_bounds(bounds: list[tuple[int, int]], world_size: int) -> list[tuple[int, int]]:
    """Split the largest batches in two until their count divides by ``world_size``.

    Raises:
        DataError: fewer pairs than ranks.
    """
    bounds = list(bounds)
    while len(bounds) % world_size:
        largest = max(range(len(bounds)), key=lambda i: bounds[i][1] - bounds[i][0])
        start, end = bounds[largest]
        if end - start < 2:
            raise DataError(f"{sum(e - s for s, e in bounds)} pairs cannot give each of {world_size} ranks a batch")
        middle = (start + end) // 2
        bounds[largest:largest + 1] = [(start, middle), (middle, end)]
    return bounds


class TextLoader:
    """Token-bucketed batches of one split for one rank; see the module docstring."""

    def __init__(self, data: EncodedSplit, keep: np.ndarray, references: list[str], *, train: bool, rank: int,
                 world_size: int, seed: int, max_tokens: int, max_sentences: int | None, max_source: int,
                 device: torch.device) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank={rank}, world_size={world_size}")
        self.data, self.keep, self.references = data, keep, references
        self.train, self.rank, self.world_size, self.seed = train, rank, world_size, seed
        self.max_source, self.device = max_source, device
        self.size = np.maximum(data.src_lengths, data.tgt_lengths)[keep]
        self.sort_key = np.argsort(self.size, kind="stable")
        self.bounds = divisible_bounds(batch_bounds(self.size[self.sort_key], max_tokens, max_sentences), world_size)
        self.samples = int(len(keep))
        self.tokens = int(data.tgt_lengths[keep].sum())

    def __len__(self) -> int:
        return len(self.bounds) // self.world_size

    def _sorted_pairs(self, epoch: int) -> np.ndarray:
        """Kept pair indices sorted by size; equal sizes in an epoch-dependent random order (train)."""
        if not self.train:
            return self.keep[self.sort_key]
        rng = np.random.default_rng(derive_seed(self.seed, epoch, SHUFFLE_STREAM))
        order = np.lexsort((rng.random(len(self.size)), self.size))
        return self.keep[order]

    def shard(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (arrays of pair indices), in order."""
        pairs = self._sorted_pairs(epoch)
        groups = len(self)
        group_order, shifts = np.arange(groups), np.zeros(groups, dtype=np.int64)
        if self.train:
            rng = np.random.default_rng(derive_seed(self.seed, epoch, SHUFFLE_STREAM + 1))
            group_order, shifts = rng.permutation(groups), rng.integers(0, self.world_size, groups)
        batches = []
        for group in group_order:
            start, end = self.bounds[group * self.world_size + (self.rank + shifts[group]) % self.world_size]
            batches.append(pairs[start:end])
        return batches

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[TextBatch]:
        """Yield this rank's batches of ``epoch``, leaving out the first ``skip``."""
        for indices in self.shard(epoch)[skip:]:
            yield self.collate(indices)

    def collate(self, indices: np.ndarray) -> TextBatch:
        data, count = self.data, len(indices)
        src_len = np.minimum(data.src_lengths[indices], self.max_source)
        tgt_len = data.tgt_lengths[indices]
        src = np.full((count, int(src_len.max())), PAD_ID, dtype=np.int64)
        tgt_out = np.full((count, int(tgt_len.max())), PAD_ID, dtype=np.int64)
        for row, index in enumerate(indices.tolist()):
            source = data.src[data.src_offsets[index]:data.src_offsets[index + 1]]
            src[row, :src_len[row]] = np.concatenate([source[:src_len[row] - 1], [EOS_ID]])
            tgt_out[row, :tgt_len[row]] = data.tgt[data.tgt_offsets[index]:data.tgt_offsets[index + 1]]
        tgt_in = np.concatenate([np.full((count, 1), BOS_ID), tgt_out[:, :-1]], axis=1)
        tgt_in[tgt_in == EOS_ID] = PAD_ID  # the last target token's EOS never feeds the decoder
        move = lambda array: torch.from_numpy(array).to(self.device, non_blocking=True)  # noqa: E731
        return TextBatch(move(src), move(tgt_in), move(tgt_out), move(src_len.astype(np.int64)),
                         int(tgt_len.sum()), torch.from_numpy(np.asarray(indices, dtype=np.int64)))

    def close(self) -> None:
        """Nothing to release (batches are built in the training process)."""


def build_text_loader(cfg: TextDataConfig, split: str, sp, *, data_dir: Path, rank: int, world_size: int,
                      seed: int, device: torch.device, max_positions: int,
                      max_sentences: int | None = None) -> TextLoader:
    """The loader of ``split`` (``cfg.train_split`` trains; any other split is for evaluation).

    Raises:
        DataError: the split is missing, malformed, or has no pair short enough to train on.
    """
    data, references = load_split(Path(data_dir), split, cfg, sp, rank)
    train = split == cfg.train_split
    if train:
        limit = min(cfg.max_len, max_positions)
        fits = (data.src_lengths <= limit) & (data.tgt_lengths <= limit) & (data.src_lengths > 1) \
            & (data.tgt_lengths > 1)
        keep = np.flatnonzero(fits)
    else:
        keep = np.arange(len(data))
    if len(keep) == 0:
        raise DataError(f"{data_dir}: no {split} pair has 1..{cfg.max_len} tokens on both sides")
    return TextLoader(data, keep, references, train=train, rank=rank, world_size=world_size, seed=seed,
                      max_tokens=cfg.max_tokens, max_sentences=max_sentences, max_source=max_positions,
                      device=device)


def steps_per_epoch(loader: TextLoader, update_freq: int) -> int:
    """Optimizer steps per epoch (the loop's formula)."""
    return math.ceil(len(loader) / update_freq)
