"""The default image kind: a small CNN trained from scratch, with dropout in the head for MC sampling."""
from __future__ import annotations

import torch
from torch import nn

from ml_backend.explain.attribution import predict_with_gradcam
from ml_backend.models.common import ImageKind, fill_empty_with_saliency


class ImageCNN(nn.Module):
    """Four conv blocks (conv, batch norm, ReLU; max-pool after the first three) -> global
    average pool -> dropout MLP head.

    The fourth block and batch norm are there for the receptive field and the speed of
    learning: with three plain blocks the model needed ~40 epochs on digits and fell for any
    shortcut (a decoy swatch) long before it learned shapes.

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
            *_block(in_channels, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 4 * w),
        )
        self.cam_layer = self.body[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(4 * w, 2 * w), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * w, n_classes)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class CNNKind(ImageKind):
    """``ImageCNN``: Grad-CAM on its last block, fused with the prediction's forward pass."""

    name = "cnn"
    selected_by = ("", "cnn")
    network_class = ImageCNN

    def predict_and_explain(self, x: torch.Tensor, method: str, mc_samples: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        if method != "gradcam":
            return super().predict_and_explain(x, method, mc_samples)
        probs, cam = predict_with_gradcam(self.network, x)  # one forward pass for both
        return probs, fill_empty_with_saliency(self.network, x, probs.argmax(dim=1), cam)
