"""A small CNN for image classification, with dropout in the head for MC sampling."""
from __future__ import annotations

import torch
from torch import nn


class ImageCNN(nn.Module):
    """Three conv blocks -> global average pool -> dropout MLP head.

    Conventions other stages rely on:
    - ``cam_layer``: the last conv block, whose output Grad-CAM explains;
    - ``features(x)`` / ``head(f)``: the convolutional part is deterministic, dropout lives
      in the head only, so MC-dropout samples reuse one feature pass (see ranking).
    """

    kind = "cnn"

    def __init__(self, n_classes: int, image_size: int = 64, in_channels: int = 3,
                 width: int = 16, dropout: float = 0.3) -> None:
        super().__init__()
        self.config = dict(n_classes=n_classes, image_size=image_size, in_channels=in_channels,
                           width=width, dropout=dropout)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
        )
        self.cam_layer = self.body[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * w, 2 * w), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * w, n_classes)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
