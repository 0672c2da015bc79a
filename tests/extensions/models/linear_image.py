"""A trivial model kind: a linear classifier on pixels (a one-file change under models/)."""
from __future__ import annotations

import torch
from torch import nn

from ml_backend.models.common import ImageKind


class LinearImage(nn.Module):
    def __init__(self, n_classes: int, image_size: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = dict(n_classes=n_classes, image_size=image_size, dropout=dropout)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * image_size * image_size, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LinearImageKind(ImageKind):
    """Evidence: input x gradient (there is no convolutional layer for Grad-CAM)."""

    name = "linear_image"
    selected_by = ("linear_image",)
    network_class = LinearImage

    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        return super().relevance(x, targets, "input_x_gradient")
