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


def marked_spans(ids: torch.Tensor, marked: torch.Tensor) -> list[tuple[int, ...]]:
    """The runs of consecutive marked, non-padding ids in each row of ``ids`` (N, L), in order."""
    spans: list[tuple[int, ...]] = []
    for row, mask in zip(ids.tolist(), (marked & (ids != PAD_ID)).tolist()):
        run: list[int] = []
        for token, hit in zip(row + [PAD_ID], mask + [False]):
            if hit:
                run.append(token)
            elif run:
                spans.append(tuple(run))
                run = []
    return spans


def substitute_marked_spans(ids: torch.Tensor, marked: torch.Tensor, c: int, spans: list[tuple[int, ...]],
                            generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
    """(c, L) copies of ``ids`` (L,) whose every run of marked ids is replaced by a whole span
    that annotators marked elsewhere (another class's phrase or spurious word, in any length),
    never by itself; the rest shifts and the row is cut or padded to L. None when some run has
    no other span to become."""
    if ids.dim() != 1 or marked.shape != ids.shape:
        raise ValueError(f"ids and marked must both be (L,), got {tuple(ids.shape)} and {tuple(marked.shape)}")
    distinct = sorted(set(spans))
    row, hits = ids.tolist(), (marked & (ids != PAD_ID)).tolist()
    pieces: list[tuple[bool, list[int]]] = []  # (marked run?, ids)
    for token, hit in zip(row, hits):
        if pieces and pieces[-1][0] == hit:
            pieces[-1][1].append(token)
        else:
            pieces.append((hit, [token]))
    choices = [[s for s in distinct if s != tuple(run)] if hit else None for hit, run in pieces]
    if any(options == [] for options in choices):
        return None
    out = []
    for _ in range(c):
        copy: list[int] = []
        for (hit, run), options in zip(pieces, choices):
            if hit:
                pick = int(torch.randint(len(options), (1,), generator=generator))
                copy.extend(options[pick])
            else:
                copy.extend(run)
        copy = [t for t in copy if t != PAD_ID][:len(row)]
        out.append(copy + [PAD_ID] * (len(row) - len(copy)))
    return torch.tensor(out, dtype=ids.dtype, device=ids.device).reshape(c, len(row))


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
