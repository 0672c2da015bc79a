"""Text -> token ids with character offsets (hashing vocabulary: no fitting, stable across versions)."""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Optional

import torch

PAD_ID = 0
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class Token:
    text: str
    start: int  # character offset into the task text
    end: int  # exclusive


def tokenize(text: str) -> list[Token]:
    """Words and single punctuation marks, with exact character offsets."""
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def token_id(token: str, n_buckets: int) -> int:
    """Stable hashed id in [1, n_buckets); 0 is padding."""
    return 1 + zlib.crc32(token.lower().encode("utf-8")) % (n_buckets - 1)


def encode_tokens(tokens: list[Token], max_len: int, n_buckets: int) -> torch.Tensor:
    """(max_len,) long tensor of ids, truncated or padded with PAD_ID."""
    ids = [token_id(t.text, n_buckets) for t in tokens[:max_len]]
    ids += [PAD_ID] * (max_len - len(ids))
    return torch.tensor(ids, dtype=torch.long)


def replace_marked_ids(ids: torch.Tensor, marked: torch.Tensor, c: int, low: int, high: int,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(c, *ids.shape) copies of ``ids`` whose ``marked`` ids in [low, high) become other random
    ids in that range (uniform over the *other* ids, so a marked token always changes)."""
    if c < 0:
        raise ValueError("c must be >= 0")
    copies = ids.unsqueeze(0).repeat(c, *([1] * ids.dim()))
    marked = marked.to(device=ids.device, dtype=torch.bool) & (ids >= low) & (ids < high)
    span = high - low
    device = generator.device if generator is not None else torch.device("cpu")
    shift = torch.randint(1, span, copies.shape, generator=generator, device=device).to(ids.device)
    replaced = low + (copies - low + shift) % span
    return torch.where(marked, replaced, copies)


def substitute_marked_ids(ids: torch.Tensor, marked: torch.Tensor, c: int, pool: torch.Tensor,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(c, *ids.shape) copies of ``ids`` whose ``marked`` ids are drawn from ``pool`` (1-D distinct
    ids, at least two): a marked word becomes another one that annotators marked, of whatever
    class, and never stays itself."""
    if c < 0:
        raise ValueError("c must be >= 0")
    if pool.dim() != 1 or pool.numel() < 2:
        raise ValueError("pool must be a 1-D tensor of at least two distinct ids")
    copies = ids.unsqueeze(0).repeat(c, *([1] * ids.dim()))
    device = generator.device if generator is not None else torch.device("cpu")
    picks = torch.randint(pool.numel(), copies.shape, generator=generator, device=device).to(ids.device)
    pool = pool.to(ids.device)
    drawn = pool[picks]
    drawn = torch.where(drawn == copies, pool[(picks + 1) % pool.numel()], drawn)  # distinct ids: a change
    return torch.where(marked.to(device=ids.device, dtype=torch.bool), drawn, copies)
