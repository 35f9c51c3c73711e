"""Self-attentive sequence models (pure `nn.Module`s built from sizes and options).

    tokens (B, T)  0 = padding, 1..n_items = catalogue position + 1, n_items + 1 = [MASK]
    x = item_embedding(tokens) + position_embedding(positions)   -> dropout
    x = blocks(x, mask)                                          -> (B, T, d)
    logits = x @ item_embedding[1..n_items]^T + bias             -> (B, T, n_items)

- **SASRec** (Kang & McAuley, 2018): causal self-attention; the output at position t sees
  items 0..t only and is trained to predict item t + 1.
- **BERT4Rec** (Sun et al., 2019): bidirectional self-attention; some items are replaced by
  [MASK] and the output there predicts the hidden item. Serving appends [MASK] to the
  history and reads the prediction at that last position.

Sequences are left-padded, so the most recent item is always at the last position
(position max_len - 1): a user's next item is read at the same position in training and
serving, whatever the length. The output layer is the input item table (tied weights) plus a
per-item bias; the bias alone is the score of a user with no history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0  # the padding token; catalogue position p is token p + 1


class SelfAttention(nn.Module):
    """Multi-head self-attention. x (B, T, d), allowed (B, 1, T, T) bool -> (B, T, d)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, d) -> (B, heads, T, d / heads)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_dropout(self.out(y.transpose(1, 2).reshape(b, t, d)))


class Block(nn.Module):
    """One transformer block: attention and a GELU feed-forward, each with a residual.

    Pre-LN (`norm_first`) normalises each sub-layer's input and trains stably without warm-up;
    post-LN (the original SASRec / BERT layout) normalises after each residual sum."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, norm_first: bool):
        super().__init__()
        self.norm_first = norm_first
        self.attention = SelfAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim), nn.Dropout(dropout)
        )
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attention(self.norm1(x), allowed)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attention(x, allowed))
        return self.norm2(x + self.ffn(x))


class SequenceEncoder(nn.Module):
    """SASRec (`causal=True`) or BERT4Rec (`causal=False`, with a [MASK] token).

    n_items: catalogue size (output classes); max_len: longest sequence (positions)."""

    def __init__(
        self,
        n_items: int,
        *,
        max_len: int = 200,
        dim: int = 64,
        blocks: int = 2,
        heads: int = 1,
        ffn_dim: int = 256,
        dropout: float = 0.2,
        causal: bool = True,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.causal = causal
        # Tokens: padding, the catalogue, and [MASK] for the bidirectional model.
        self.mask_token = n_items + 1 if not causal else None
        self.item = nn.Embedding(n_items + 1 + (not causal), dim, padding_idx=PAD)
        self.position = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        # Post-LN normalises the embedding sum (as BERT); pre-LN needs a final norm instead,
        # since its residual stream is never normalised otherwise.
        self.input_norm = nn.Identity() if norm_first else nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, ffn_dim, dropout, norm_first) for _ in range(blocks)
        )
        self.final_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.bias = nn.Parameter(torch.zeros(n_items))
        self.apply(_init)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) left-padded, T <= max_len -> hidden states (B, T, d)."""
        b, t = tokens.shape
        if t > self.max_len:
            raise ValueError(f"sequence length {t} > max_len {self.max_len}")
        # Left padding: the last column is position max_len - 1 whatever T is.
        positions = torch.arange(self.max_len - t, self.max_len, device=tokens.device)
        x = self.dropout(self.input_norm(self.item(tokens) + self.position(positions)))
        x = x * (tokens != PAD).unsqueeze(-1)  # padding carries nothing into the blocks
        allowed = self.attention_mask(tokens)
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T) bool, True where query i may read key j: real keys only (and j <= i
        when causal). The diagonal is always allowed so that a padding query has one key
        (its output is never read) instead of a softmax over nothing, which is NaN."""
        t = tokens.shape[1]
        allowed = (tokens != PAD)[:, None, None, :]  # (B, 1, 1, T)
        if self.causal:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=tokens.device)
        return allowed | eye

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d) -> (..., n_items) scores of every catalogue position."""
        table = self.item.weight[1 : self.n_items + 1]
        if hidden.dim() == 2:  # one fused multiply-add: the (P, n_items) matrix is the big one
            return torch.addmm(self.bias, hidden, table.T)
        return hidden @ table.T + self.bias

    def next_item_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n_items) scores of the item after each left-padded sequence (B, T): read at the
        last position (for BERT4Rec the sequence must end with [MASK])."""
        return self.logits(self(tokens)[:, -1])


def _init(module: nn.Module) -> None:
    """GPT-style init: N(0, 0.02) weights, zero biases, the padding row zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
