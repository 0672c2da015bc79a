"""Text kind on a pretrained encoder (BERT, DistilBERT, RoBERTa...) with a classification head.

A document longer than the encoder's window is read whole, in overlapping windows (at most
``max_windows``). The input tensor is (windows, 3, window length): token ids, attention mask and
``1 + the index of the document token`` at each position (0 for special and padding tokens), so a
token that two windows share is one document token. Token masks, relevances and gradients live on
document tokens, each with its exact character offsets.

With a frozen encoder and a feature cache, each document's pooled features are computed once and the
head (and its MC-dropout samples) reads them back; evidence, a gradient at the embeddings, still
runs the encoder.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ml_backend.data.text import Token, replace_marked_ids, substitute_marked_ids
from ml_backend.models import backbones
from ml_backend.models.base import TEXT, InputSpec
from ml_backend.models.common import TextKind

log = logging.getLogger(__name__)

IDS, ATTENTION, TOKEN = 0, 1, 2


class BackboneTextClassifier(backbones.CachedFeatures, nn.Module):
    """encoder -> first-token features per window -> mean over the document's windows -> head."""

    pretrained_part = "encoder"

    def __init__(self, n_classes: int, backbone: str, train_mode: str = "frozen", finetune_blocks: int = 2,
                 dropout: float = 0.1, fingerprint: str = "", max_windows: int = 16) -> None:
        super().__init__()
        path = Path(backbone)
        if fingerprint and fingerprint != backbones.fingerprint(path):
            raise backbones.BackboneError(f"backbone {path.name} changed since this model was trained")
        pristine, self.tokenizer = backbones.load(path, TEXT)
        self.config = dict(n_classes=n_classes, backbone=str(path), train_mode=train_mode,
                           finetune_blocks=finetune_blocks, dropout=dropout, max_windows=max_windows,
                           fingerprint=fingerprint or backbones.fingerprint(path))
        self.encoder = copy.deepcopy(pristine)  # a project's fine-tuning must not touch the shared copy
        self.tuned_blocks = backbones.set_trainable(self.encoder, train_mode, finetune_blocks)
        limits = [getattr(pristine.config, "max_position_embeddings", None), self.tokenizer.model_max_length, 512]
        self.window = int(min(v for v in limits if isinstance(v, int) and v > 0))
        self.stride = self.window // 4
        width = backbones.hidden_size(self.encoder)
        self.scaler = backbones.FeatureScaler(width)  # standardised features: the head fits them as a logistic regression would
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, n_classes))

    def train(self, mode: bool = True) -> "BackboneTextClassifier":
        super().train(mode)
        backbones.set_train_mode(self.encoder, self.tuned_blocks, mode)
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, W, L, E) word embeddings of the ids."""
        return self.encoder.get_input_embeddings()(x[:, :, IDS])

    def features_embedded(self, emb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N, D): the mean over each document's windows of the encoder's first-token state."""
        n, w, length, e = emb.shape
        attention = x[:, :, ATTENTION]
        present = attention.any(dim=2)  # (N, W) windows that hold text
        flat = present.flatten()
        out = self.encoder(inputs_embeds=emb.reshape(n * w, length, e)[flat],
                           attention_mask=attention.reshape(n * w, length)[flat])
        first = out.last_hidden_state[:, 0]
        summed = first.new_zeros(n * w, first.shape[-1]).index_put((flat.nonzero()[:, 0],), first)
        counts = present.sum(dim=1, keepdim=True).clamp_min(1).to(first.dtype)
        return summed.view(n, w, -1).sum(dim=1) / counts

    @torch.no_grad()
    def feature_entries(self, x: torch.Tensor, need: Sequence[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        return {"pooled": self.features_embedded(self.embed(x), x)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.caches(x):
            return self.cached(x)["pooled"]
        return self.features_embedded(self.embed(x), x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.scaler(features))

    def forward_embedded(self, emb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features_embedded(emb, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def encode(self, text: str) -> tuple[torch.Tensor, list[Token]]:
        """(max_windows, 3, window) input and the document tokens, in order."""
        enc = self.tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True,
                             return_overflowing_tokens=True, truncation=True, max_length=self.window,
                             stride=self.stride, padding="max_length")
        max_windows = self.config["max_windows"]
        if len(enc["input_ids"]) > max_windows:
            log.warning("a %d-character document needs %d windows; reading the first %d (max_windows)",
                        len(text), len(enc["input_ids"]), max_windows)
        x = torch.zeros((max_windows, 3, self.window), dtype=torch.long)
        index: dict[tuple[int, int], int] = {}
        tokens: list[Token] = []
        for w in range(min(len(enc["input_ids"]), max_windows)):
            x[w, IDS] = torch.tensor(enc["input_ids"][w])
            x[w, ATTENTION] = torch.tensor(enc["attention_mask"][w])
            for p, ((start, end), special) in enumerate(zip(enc["offset_mapping"][w], enc["special_tokens_mask"][w])):
                if special or end <= start:
                    continue
                if (start, end) not in index:
                    index[(start, end)] = len(tokens)
                    tokens.append(Token(text[start:end], start, end))
                x[w, TOKEN, p] = 1 + index[(start, end)]
        return x, tokens


def per_token(values: torch.Tensor, x: torch.Tensor, length: int, reduce: str) -> torch.Tensor:
    """(N, W, L) values at window positions -> (N, length) per document token (``sum`` or ``amax``
    over a token's occurrences); positions of no token are dropped."""
    n = values.shape[0]
    index = x[:, :, TOKEN].reshape(n, -1)
    out = values.new_zeros(n, length + 1)
    out = out.scatter_reduce(1, index, values.reshape(n, -1), reduce=reduce, include_self=True)
    return out[:, 1:]


class BackboneTextKind(backbones.BackboneKind, TextKind):
    """A ``transformers`` text encoder with a trained head (``backbone`` names its directory)."""

    name = "backbone_text"
    selected_by = ("", "backbone")
    uses_backbone = True
    network_class = BackboneTextClassifier

    @classmethod
    def default_config(cls, n_classes: int, settings: Any) -> dict[str, Any]:
        return {**super().default_config(n_classes, settings), "max_windows": settings.max_windows}

    def input_spec(self) -> InputSpec:
        return InputSpec(TEXT, max_len=self.network.config["max_windows"] * self.network.window)

    def encode_text(self, text: str) -> tuple[torch.Tensor, list[Token]]:
        return self.network.encode(text)

    def mask_ids(self, x: torch.Tensor) -> torch.Tensor:
        return per_token(x[:, :, IDS], x, self.input_spec().max_len, "amax")

    def region_features(self, x: torch.Tensor, keep: bool = False) -> Optional[torch.Tensor]:
        """(N, tokens, D): each document token's contextual embedding (the encoder's last hidden
        state, averaged over its word pieces and the windows that hold it)."""
        network = self.network
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                n, w, length = x.shape[0], x.shape[1], x.shape[3]
                attention = x[:, :, ATTENTION].reshape(n * w, length)
                present = attention.any(dim=1)
                hidden = x.new_zeros((n * w, length, backbones.hidden_size(network.encoder)), dtype=torch.float)
                if bool(present.any()):
                    out = network.encoder(input_ids=x[:, :, IDS].reshape(n * w, length)[present],
                                          attention_mask=attention[present])
                    hidden[present] = out.last_hidden_state.float()
        finally:
            network.train(was_training)
        tokens = self.input_spec().max_len
        index = x[:, :, TOKEN].reshape(n, -1)
        summed = hidden.new_zeros((n, tokens + 1, hidden.shape[-1])).scatter_add(
            1, index[:, :, None].expand(-1, -1, hidden.shape[-1]), hidden.view(n, w * length, -1))
        counts = hidden.new_zeros((n, tokens + 1)).scatter_add(1, index, torch.ones_like(index, dtype=hidden.dtype))
        return (summed / counts.clamp_min(1)[:, :, None])[:, 1:]  # position 0: special tokens and padding

    def _gradients(self, x: torch.Tensor, targets: torch.Tensor | None, create_graph: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, embeddings, d objective / d embeddings): the objective is the target logits,
        or the summed log-probabilities when ``targets`` is None."""
        emb = self.network.embed(x)
        if not emb.requires_grad:  # a frozen encoder: take the gradient at the embeddings themselves
            emb = emb.detach().requires_grad_(True)
        logits = self.network.forward_embedded(emb, x)
        if targets is None:
            log_p = torch.nn.functional.logsigmoid(logits) if self.multi_label else torch.log_softmax(logits, dim=1)
            objective = log_p.sum()
        else:
            objective = logits.gather(1, targets[:, None]).sum()
        (grads,) = torch.autograd.grad(objective, emb, create_graph=create_graph)
        return logits, emb, grads

    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        """Per document token: |gradient| (saliency) or |gradient x embedding| (the others)."""
        network = self.network
        was_training = network.training
        network.eval()
        try:
            with torch.enable_grad():
                _, emb, grads = self._gradients(x, targets, create_graph=False)
        finally:
            network.train(was_training)
        values = grads.norm(dim=-1) if method == "saliency" else (grads * emb).sum(-1).abs()
        return per_token(values.detach(), x, self.input_spec().max_len, "amax")

    def input_gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _, grads = self._gradients(x, None, create_graph=True)
        return logits, per_token(grads.pow(2).sum(-1), x, self.input_spec().max_len, "sum")

    def replace_tokens(self, x: torch.Tensor, marked: torch.Tensor, copies: int,
                       generator: torch.Generator, pool: Optional[list[tuple[int, ...]]] = None) -> torch.Tensor:
        """Every word piece of a marked document token gets another id: one drawn from the ids of
        ``pool``'s spans (a piece of a token marked elsewhere; ``mask_ids`` gives one per token),
        or a random one. (Pieces keep their positions: splicing whole spans would need the word
        pieces re-laid.)"""
        index = x[:, TOKEN]
        positions = torch.zeros_like(index, dtype=torch.bool)
        hit = torch.nonzero(marked).flatten() + 1
        positions |= torch.isin(index, hit)
        tokenizer = self.network.tokenizer
        low = max(tokenizer.all_special_ids, default=-1) + 1  # special tokens sit at the vocabulary's start
        pooled = torch.unique(torch.tensor([t for span in pool or () for t in span], dtype=torch.long))
        if pooled.numel() >= 2:
            ids = substitute_marked_ids(x[:, IDS], positions, copies, pooled, generator)
        else:
            ids = replace_marked_ids(x[:, IDS], positions, copies, low, max(tokenizer.vocab_size, low + 2), generator)
        out = x.unsqueeze(0).repeat(copies, 1, 1, 1)
        out[:, :, IDS] = ids
        return out
