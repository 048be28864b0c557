"""Transformer encoder-decoder for translation (Vaswani et al.), built from torch.nn.

Defaults are Transformer-big as in MLPerf's reference, fairseq's
``transformer_wmt_en_de_big_t2t``: 6+6 layers, d_model 1024, FFN 4096, 16 heads,
**pre-norm** (``normalize_before``: LayerNorm before each sub-layer, plus a final LayerNorm
on the encoder and decoder outputs), sinusoidal positions, one embedding matrix shared by
the encoder input, the decoder input and the output projection (one joint vocabulary).
``norm: post`` gives the original post-norm layers instead.

Attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`, so
flash / memory-efficient kernels are used where the device has them. Decoding is
incremental: :meth:`Transformer.decode_step` keeps per-layer key/value caches (self-
attention keys grow by one position per step; cross-attention keys are computed once),
and :meth:`Transformer.reorder_cache` follows beam search's choice of hypotheses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.models.config import TransformerConfig

Cache = list[dict[str, Tensor]]  # one dict per decoder layer: self_k, self_v, cross_k, cross_v


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """``[length, dim]`` sin/cos position encodings (fairseq/tensor2tensor layout: sin half, cos half)."""
    half = dim // 2
    scale = math.log(10000) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -scale)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(table, (0, dim % 2))


class MultiheadAttention(nn.Module):
    """Multi-head attention on top of ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def split(self, x: Tensor) -> Tensor:
        """``[B, T, D]`` to ``[B, H, T, D/H]``."""
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.k_proj(memory)), self.split(self.v_proj(memory))

    def attend(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
               causal: bool = False) -> Tensor:
        """Attention of ``query`` ``[B, T, D]`` over split keys/values; ``mask`` True = may attend."""
        q = self.split(self.q_proj(query))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=p, is_causal=causal)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, query: Tensor, memory: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        key, value = self.project_kv(memory)
        return self.attend(query, key, value, mask, causal)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class Residual(nn.Module):
    """``x + dropout(f(norm(x)))`` (pre-norm) or ``norm(x + dropout(f(x)))`` (post-norm)."""

    def __init__(self, dim: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(dim), nn.Dropout(dropout), pre_norm

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        self.attn = MultiheadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout)
        self.attn_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.attn_block(x, lambda h: self.attn(h, h, mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        pre = cfg.norm == "pre"
        self.self_attn = MultiheadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.cross_attn = MultiheadAttention(cfg.d_model, cfg.heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout)
        self.self_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.cross_block = Residual(cfg.d_model, cfg.dropout, pre)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, pre)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        x = self.self_block(x, lambda h: self.self_attn(h, h, causal=True))
        x = self.cross_block(x, lambda h: self.cross_attn(h, memory, memory_mask))
        return self.ffn_block(x, self.ffn)

    def step(self, x: Tensor, memory_mask: Tensor, cache: dict[str, Tensor]) -> Tensor:
        """One new position ``x`` ``[B, 1, D]``; appends its keys/values to ``cache``."""

        def self_attention(h: Tensor) -> Tensor:
            key, value = self.self_attn.project_kv(h)
            if "self_k" in cache:
                key = torch.cat([cache["self_k"], key], dim=2)
                value = torch.cat([cache["self_v"], value], dim=2)
            cache["self_k"], cache["self_v"] = key, value
            return self.self_attn.attend(h, key, value)  # the cache holds only the past: no mask

        x = self.self_block(x, self_attention)
        x = self.cross_block(x, lambda h: self.cross_attn.attend(h, cache["cross_k"], cache["cross_v"], memory_mask))
        return self.ffn_block(x, self.ffn)


class Transformer(nn.Module):
    """Encoder-decoder; ``forward(src, tgt_in)`` returns logits ``[B, T, vocab]``."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.cfg, self.pad_id, self.vocab_size = cfg, pad_id, vocab_size
        self.embed_scale = math.sqrt(cfg.d_model)
        self.embed = nn.Embedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        shared = cfg.share_embeddings
        self.decoder_embed = self.embed if shared else nn.Embedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        pre = cfg.norm == "pre"
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if pre else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform projections, N(0, d^-1/2) embeddings (fairseq's initialisation)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for embed in {self.embed, self.decoder_embed}:
            nn.init.normal_(embed.weight, mean=0.0, std=self.cfg.d_model ** -0.5)
            with torch.no_grad():
                embed.weight[self.pad_id].zero_()

    def embed_tokens(self, tokens: Tensor, embed: nn.Embedding, offset: int = 0) -> Tensor:
        length = tokens.shape[1]
        if offset + length > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + length} tokens exceeds model.max_positions "
                             f"{self.cfg.max_positions}")
        x = embed(tokens) * self.embed_scale + self.positions[offset:offset + length].to(embed.weight.dtype)
        return self.dropout(x)

    def padding_mask(self, src: Tensor) -> Tensor:
        """``[B, 1, 1, S]``, True where the source holds a real token (attention may look there)."""
        return (src != self.pad_id)[:, None, None, :]

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output ``[B, S, D]`` and the source mask for cross-attention."""
        mask = self.padding_mask(src)
        x = self.embed_tokens(src, self.embed)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def logits(self, x: Tensor) -> Tensor:
        return F.linear(x, self.decoder_embed.weight)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, mask = self.encode(src)
        x = self.embed_tokens(tgt_in, self.decoder_embed)
        for layer in self.decoder:
            x = layer(x, memory, mask)
        return self.logits(self.decoder_norm(x))

    # ------------------------------------------------------------------ incremental decoding

    def start_cache(self, memory: Tensor) -> Cache:
        """Per-layer caches holding the cross-attention keys/values of ``memory``."""
        cache = []
        for layer in self.decoder:
            key, value = layer.cross_attn.project_kv(memory)
            cache.append({"cross_k": key, "cross_v": value})
        return cache

    def decode_step(self, tokens: Tensor, step: int, memory_mask: Tensor, cache: Cache) -> Tensor:
        """Log-probabilities ``[B, vocab]`` of the next token, given the newest ``tokens`` ``[B]``."""
        x = self.embed_tokens(tokens[:, None], self.decoder_embed, offset=step)
        for layer, layer_cache in zip(self.decoder, cache):
            x = layer.step(x, memory_mask, layer_cache)
        return F.log_softmax(self.logits(self.decoder_norm(x[:, -1])).float(), dim=-1)

    @staticmethod
    def reorder_cache(cache: Cache, order: Tensor) -> Cache:
        """Keep the cache rows ``order`` (beam search's surviving hypotheses)."""
        return [{name: value.index_select(0, order) for name, value in layer.items()} for layer in cache]


# --------------------------------------------------------------------------- search


def strip_hypotheses(tokens: Tensor, eos: int, pad: int) -> list[list[int]]:
    """Each row of ``tokens`` up to (not including) its first EOS, without padding."""
    hypotheses = []
    for row in tokens.tolist():
        cut = row.index(eos) if eos in row else len(row)
        hypotheses.append([token for token in row[:cut] if token != pad])
    return hypotheses


def _force_eos(lprobs: Tensor, at_limit: Tensor, eos: int) -> None:
    """Rows that reached their length limit may only end (keeping EOS's own log-probability)."""
    if bool(at_limit.any()):
        eos_lp = lprobs[at_limit, eos]
        lprobs[at_limit] = float("-inf")
        lprobs[at_limit, eos] = eos_lp


@torch.no_grad()
def greedy_decode(model: Transformer, src: Tensor, max_len: Tensor, *, bos: int, eos: int) -> list[list[int]]:
    """Greedy translations of ``src`` ``[B, S]``; row ``i`` gets at most ``max_len[i]`` tokens (EOS included)."""
    max_len = max_len.clamp(1, model.cfg.max_positions)
    memory, mask = model.encode(src)
    cache = model.start_cache(memory)
    tokens = torch.full((src.shape[0],), bos, dtype=torch.long, device=src.device)
    finished = torch.zeros_like(tokens, dtype=torch.bool)
    out = []
    for step in range(int(max_len.max())):
        lprobs = model.decode_step(tokens, step, mask, cache)
        _force_eos(lprobs, step + 1 >= max_len, eos)
        tokens = lprobs.argmax(dim=-1).masked_fill(finished, model.pad_id)
        out.append(tokens)
        finished |= tokens == eos
        if bool(finished.all()):
            break
    return strip_hypotheses(torch.stack(out, dim=1), eos, model.pad_id)


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, max_len: Tensor, *, beam: int, bos: int, eos: int,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Beam-search translations of ``src`` ``[B, S]`` (``beam`` hypotheses per sentence).

    Finished hypotheses keep their slot and score (they can only continue with padding);
    the winner maximises ``log p / length ** length_penalty`` (fairseq's ``--lenpen``).
    """
    batch, pad = src.shape[0], model.pad_id
    max_len = max_len.clamp(1, model.cfg.max_positions).repeat_interleave(beam)
    memory, mask = model.encode(src)
    memory, mask = memory.repeat_interleave(beam, 0), mask.repeat_interleave(beam, 0)
    cache = model.start_cache(memory)
    scores = torch.zeros(batch, beam, device=src.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    tokens = torch.full((batch * beam,), bos, dtype=torch.long, device=src.device)
    history = tokens.new_empty(batch * beam, 0)
    finished = torch.zeros_like(tokens, dtype=torch.bool)
    lengths = torch.zeros_like(tokens)
    rows = torch.arange(batch, device=src.device)[:, None] * beam
    for step in range(int(max_len.max())):
        lprobs = model.decode_step(tokens, step, mask, cache)
        _force_eos(lprobs, step + 1 >= max_len, eos)
        lprobs[finished] = float("-inf")
        lprobs[finished, pad] = 0.0
        vocab = lprobs.shape[1]
        scores, flat = (scores.view(-1, 1) + lprobs).view(batch, -1).topk(beam, dim=1)
        order = (rows + flat // vocab).view(-1)
        tokens = (flat % vocab).view(-1)
        history = torch.cat([history[order], tokens[:, None]], dim=1)
        lengths = lengths[order] + (~finished[order]).long()
        finished = finished[order] | (tokens == eos)
        cache = model.reorder_cache(cache, order)
        max_len = max_len[order]
        if bool(finished.all()):
            break
    normalised = scores.view(-1) / lengths.clamp(min=1).float() ** length_penalty
    best = rows.view(-1) + normalised.view(batch, beam).argmax(dim=1)
    return strip_hypotheses(history[best], eos, pad)


def build_transformer(cfg: TransformerConfig, vocab_size: int, pad_id: int) -> Transformer:
    """A :class:`Transformer` for a joint vocabulary of ``vocab_size`` pieces."""
    return Transformer(cfg, vocab_size, pad_id)


# --------------------------------------------------------------------------- export views (podrun export)


class TransformerEncoder(nn.Module):
    """``src [B, S]`` to the encoder output ``memory [B, S, D]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> Tensor:
        return self.model.encode(src)[0]


class TransformerDecoderStep(nn.Module):
    """Log-probabilities ``[B, vocab]`` of the token after ``prefix [B, T]``, given ``memory`` and ``src``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, prefix: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        model = self.model
        mask = model.padding_mask(src)
        x = model.embed_tokens(prefix, model.decoder_embed)
        for layer in model.decoder:
            x = layer(x, memory, mask)
        return torch.log_softmax(model.logits(model.decoder_norm(x[:, -1])).float(), dim=-1)
