"""The default text kind: hashed embeddings -> convolution -> masked max pool."""
from __future__ import annotations

import torch
from torch import nn

from ml_backend.data.text import PAD_ID
from ml_backend.models.common import TextKind


class TextCNN(nn.Module):
    """Conventions other stages rely on:
    - ``embedding``: the layer whose outputs attributions and input-gradient penalties act on;
    - ``forward_embedded(emb, pad_mask)``: the rest of the network, from embeddings;
    - ``features`` / ``head``: deterministic part and dropout head (MC sampling).
    """

    kind = "text_cnn"

    def __init__(self, n_classes: int, n_buckets: int = 20000, max_len: int = 128,
                 embed_dim: int = 64, channels: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        self.config = dict(n_classes=n_classes, n_buckets=n_buckets, max_len=max_len,
                           embed_dim=embed_dim, channels=channels, dropout=dropout)
        self.embedding = nn.Embedding(n_buckets, embed_dim, padding_idx=PAD_ID)
        self.conv = nn.Conv1d(embed_dim, channels, kernel_size=3, padding=1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, n_classes))

    def features_embedded(self, emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(emb.transpose(1, 2)))  # (N, C, L)
        h = h.masked_fill(~pad_mask.unsqueeze(1), float("-inf"))
        pooled = h.max(dim=2).values
        return torch.nan_to_num(pooled, neginf=0.0)  # an empty text pools to zeros

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.features_embedded(self.embedding(ids), ids != PAD_ID)

    def token_features(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L, E + C): each token's embedding and the convolution's view of it in context."""
        emb = self.embedding(ids)
        return torch.cat([emb, torch.relu(self.conv(emb.transpose(1, 2))).transpose(1, 2)], dim=2)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward_embedded(self, emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features_embedded(emb, pad_mask))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


class TextCNNKind(TextKind):
    """``TextCNN``: captum attributions on its embeddings."""

    name = "text_cnn"
    selected_by = ("", "text_cnn")
    network_class = TextCNN
    lr_schedule = "cosine"
