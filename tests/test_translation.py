"""The translation recipe's parts: toy corpus, tokenizer, sharded token batches, model, search, BLEU, MLPerf keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.data.config import TextDataConfig, TokenizerConfig
from jobs.data.parallel_text import BOS_ID, EOS_ID, PAD_ID
from jobs.data.text import TextLoader, build_text_loader, divisible_bounds, load_tokenizer
from jobs.models.config import TransformerConfig
from jobs.models.transformer import beam_search, build_transformer, greedy_decode
from jobs.rank.mlperf_log import MlperfLogger, log_submission
from jobs.tasks.translation import check_compliance, corpus_bleu, log_transformer_hparams, v06_lines
from orchestrator.datasets.translation_toy import TOY_VOCAB_SIZE, toy_lexicon, write_translation_toy
from orchestrator.errors import DataError
from orchestrator.spec.resolve import load_recipe
from orchestrator.spec.scaling import derive

pytestmark = pytest.mark.fast  # no cluster, server or training job: make test-fast

torch.set_num_threads(1)
TINY = TransformerConfig(arch="transformer", d_model=32, ffn_dim=64, heads=4, encoder_layers=1, decoder_layers=2,
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, max_positions=64)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "translation-toy"
    write_translation_toy(out, train_pairs=1500, valid_pairs=101, test_pairs=10, seed=3)
    return out


@pytest.fixture(scope="module")
def data_cfg() -> TextDataConfig:
    return TextDataConfig(kind="parallel_text", dataset="translation-toy", max_tokens=256, max_len=64,
                          tokenizer=TokenizerConfig(vocab_size=TOY_VOCAB_SIZE))


@pytest.fixture(scope="module")
def sp(toy: Path, data_cfg: TextDataConfig):
    return load_tokenizer(toy, data_cfg, rank=0)


def loader(toy: Path, cfg: TextDataConfig, sp, split: str = "train", rank: int = 0, world: int = 1,
           **kw) -> TextLoader:
    return build_text_loader(cfg, split, sp, data_dir=toy, rank=rank, world_size=world, seed=5,
                             device=torch.device("cpu"), max_positions=64, **kw)


# --------------------------------------------------------------------------- data


def test_toy_corpus_reorders_and_maps_words(toy: Path) -> None:
    source = (toy / "train.en").read_text().splitlines()
    target = (toy / "train.de").read_text().splitlines()
    assert len(source) == len(target) == 1500
    lexicon = {s: t for pairs in toy_lexicon(3).values() for s, t in pairs}
    verbs = {s for s, _ in toy_lexicon(3)["verb"]}
    monotone_differs = 0
    for src, tgt in zip(source, target):
        words = src.split()
        assert not set(words) & set(tgt.split()), "target shares no word with the source (not a copy)"
        assert sorted(lexicon[w] for w in words) == sorted(tgt.split()), "same words, mapped"
        verb = next(w for w in words if w in verbs)
        assert tgt.split()[-1] == lexicon[verb], "the verb moves to the end"
        monotone_differs += " ".join(lexicon[w] for w in words) != tgt
    assert monotone_differs > 0.9 * len(source)


def test_toy_refuses_non_empty_folder(toy: Path) -> None:
    with pytest.raises(DataError, match="not empty"):
        write_translation_toy(toy, train_pairs=5, valid_pairs=5)


def test_tokenizer_round_trip_and_special_ids(toy: Path, sp) -> None:
    line = (toy / "valid.en").read_text().splitlines()[0]
    assert sp.decode(sp.encode(line)) == line
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, 1, BOS_ID, EOS_ID)
    assert sp.get_piece_size() <= TOY_VOCAB_SIZE


def test_missing_tokenizer_is_trained_on_rank0(tmp_path: Path, data_cfg: TextDataConfig) -> None:
    out = tmp_path / "toy"
    write_translation_toy(out, train_pairs=300, valid_pairs=5, vocab_size=None)
    assert not list(out.glob("spm-*"))
    cfg = data_cfg.model_copy(update={"tokenizer": TokenizerConfig(vocab_size=200)})
    processor = load_tokenizer(out, cfg, rank=0)
    assert (out / "spm-200.model").is_file() and processor.get_piece_size() <= 200


@pytest.mark.parametrize("world", [2, 3])
def test_shards_cover_every_pair_once_with_equal_lengths(toy: Path, data_cfg: TextDataConfig, sp,
                                                         world: int) -> None:
    loaders = [loader(toy, data_cfg, sp, rank=r, world=world) for r in range(world)]
    assert len({len(item) for item in loaders}) == 1
    for epoch in (0, 1):
        seen = [np.concatenate([b.ids.numpy() for b in item.epoch(epoch)]) for item in loaders]
        assert [len(list(item.epoch(epoch))) for item in loaders] == [len(loaders[0])] * world
        everything = np.concatenate(seen)
        assert len(everything) == len(np.unique(everything)) == loaders[0].samples
        shares = [len(ids) for ids in seen]
        assert max(shares) - min(shares) < 0.2 * max(shares)


def test_batches_respect_max_tokens_and_shapes(toy: Path, data_cfg: TextDataConfig, sp) -> None:
    train = loader(toy, data_cfg, sp)
    for batch in train.epoch(0):
        count, longest = batch.tgt_out.shape
        assert count * max(longest, batch.src.shape[1]) <= data_cfg.max_tokens or count == 1
        assert batch.tgt_in.shape == batch.tgt_out.shape
        assert bool((batch.tgt_in[:, 0] == BOS_ID).all())
        assert batch.ntokens == int((batch.tgt_out != PAD_ID).sum())
        assert bool((batch.tgt_out == EOS_ID).sum(1).eq(1).all())
        assert torch.equal(batch.src_lengths, (batch.src != PAD_ID).sum(1))


def test_epochs_are_deterministic_and_skip_is_exact(toy: Path, data_cfg: TextDataConfig, sp) -> None:
    first, second = loader(toy, data_cfg, sp, rank=1, world=2), loader(toy, data_cfg, sp, rank=1, world=2)
    ids = lambda item, epoch, skip=0: [b.ids.tolist() for b in item.epoch(epoch, skip)]  # noqa: E731
    assert ids(first, 2) == ids(second, 2)
    assert ids(first, 2, skip=3) == ids(first, 2)[3:]
    assert ids(first, 2) != ids(first, 3)


def test_validation_keeps_every_pair(toy: Path, data_cfg: TextDataConfig, sp) -> None:
    loaders = [loader(toy, data_cfg, sp, split="valid", rank=r, world=2, max_sentences=8) for r in range(2)]
    ids = np.concatenate([b.ids.numpy() for item in loaders for b in item.epoch(0)])
    assert sorted(ids.tolist()) == list(range(101))
    assert loaders[0].references == (toy / "valid.de").read_text().splitlines()


def test_too_few_pairs_for_the_ranks_is_an_error() -> None:
    with pytest.raises(DataError, match="cannot give each of 4 ranks"):
        divisible_bounds([(0, 2), (2, 3)], 4)


# --------------------------------------------------------------------------- model and search


def random_src(vocab: int = 50) -> torch.Tensor:
    torch.manual_seed(0)
    src = torch.randint(4, vocab, (3, 7))
    src[:, -1] = EOS_ID
    src[2, 4:] = PAD_ID  # a shorter sentence
    src[2, 3] = EOS_ID
    return src


def test_incremental_decoding_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = build_transformer(TINY, vocab_size=50, pad_id=PAD_ID).eval()
    src, tgt = random_src(), torch.randint(4, 50, (3, 6))
    tgt[:, 0] = BOS_ID
    with torch.no_grad():
        full = torch.log_softmax(model(src, tgt), dim=-1)
        memory, mask = model.encode(src)
        cache = model.start_cache(memory)
        steps = [model.decode_step(tgt[:, t], t, mask, cache) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_greedy_and_beam_shapes_and_limits() -> None:
    torch.manual_seed(0)
    model = build_transformer(TINY, vocab_size=50, pad_id=PAD_ID).eval()
    src, max_len = random_src(), torch.tensor([5, 3, 1])
    greedy = greedy_decode(model, src, max_len, bos=BOS_ID, eos=EOS_ID)
    beam = beam_search(model, src, max_len, beam=4, bos=BOS_ID, eos=EOS_ID, length_penalty=0.6)
    for out in (greedy, beam):
        assert len(out) == 3
        assert all(len(row) <= limit - 1 for row, limit in zip(out, max_len.tolist()))
        assert all(EOS_ID not in row and PAD_ID not in row for row in out)
    assert beam_search(model, src, max_len, beam=1, bos=BOS_ID, eos=EOS_ID) == greedy


def test_shared_embeddings_and_pre_norm() -> None:
    model = build_transformer(TINY, vocab_size=50, pad_id=PAD_ID)
    assert model.decoder_embed is model.embed
    assert model.encoder[0].attn_block.pre_norm and isinstance(model.encoder_norm, torch.nn.LayerNorm)


def test_tiny_model_loss_drops(toy: Path, data_cfg: TextDataConfig, sp) -> None:
    torch.manual_seed(0)
    cfg = TINY.model_copy(update={"d_model": 64, "ffn_dim": 128})
    model = build_transformer(cfg, vocab_size=sp.get_piece_size(), pad_id=PAD_ID)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.0)
    batches = list(loader(toy, data_cfg, sp).epoch(0))[:6]
    losses = []
    for step in range(60):
        batch = batches[step % len(batches)]
        logits = model(batch.src, batch.tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(),
                                                 ignore_index=PAD_ID, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6])


# --------------------------------------------------------------------------- BLEU and MLPerf


def test_bleu_of_references_against_themselves_is_100(toy: Path) -> None:
    refs = (toy / "valid.de").read_text().splitlines()
    assert corpus_bleu(refs, refs, lowercase=False, tokenize="13a").score == pytest.approx(100.0)
    lower = corpus_bleu([r.upper() for r in refs], refs, lowercase=True, tokenize="intl")
    assert lower.score == pytest.approx(100.0) and "case:lc" in str(lower.signature)


def test_transformer_log_passes_the_060_checker(tmp_path: Path) -> None:
    recipe = load_recipe("transformer", "tiny", {})
    derived = derive(recipe, 2)
    path = tmp_path / "mlperf.log"
    with MlperfLogger(path) as mllog:
        mllog.event("cache_clear", True)  # ruleset 0.6.0 wants it before init_start
        mllog.start("init_start")
        log_submission(mllog, recipe.mlperf, platform="1xCPU")
        log_transformer_hparams(mllog, recipe, derived, train_samples=100, eval_samples=10, warmup_steps=100)
        mllog.end("init_stop")
        mllog.start("run_start")
        for epoch in (1, 2):
            mllog.start("block_start", metadata={"first_epoch_num": epoch, "epoch_count": 1})
            mllog.start("epoch_start", metadata={"epoch_num": epoch})
            mllog.end("epoch_stop", metadata={"epoch_num": epoch})
            mllog.start("eval_start", metadata={"epoch_num": epoch})
            mllog.event("eval_accuracy", 30.0 * epoch, metadata={"epoch_num": epoch})
            mllog.end("eval_stop", metadata={"epoch_num": epoch})
            mllog.end("block_stop", metadata={"first_epoch_num": epoch})
        mllog.end("run_stop", metadata={"status": "success"})
    lines = v06_lines(path.read_text())
    assert lines[0].startswith(":::MLL ") and json.loads(lines[0].split(": ", 1)[1])["value"] is True
    passed, output = check_compliance(path, "0.6.0")
    assert passed, output
