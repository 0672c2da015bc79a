"""The default image kind: a small CNN trained from scratch, with dropout in the head for MC sampling."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ml_backend.explain.attribution import predict_with_evidence
from ml_backend.models.common import ImageKind, fill_empty_with_saliency

# Served evidence (the ``gradcam`` setting): read on a grid of at least EVIDENCE_CELLS cells a
# side, smoothed over EVIDENCE_SMOOTH of the side, squared. Chosen by benchmarks/bench_evidence.py.
EVIDENCE_CELLS = 16
EVIDENCE_SMOOTH = 1.5 / 28
EVIDENCE_POWER = 2.0


class ImageCNN(nn.Module):
    """Four conv blocks (conv, batch norm, ReLU; max-pool after the first three) -> global
    average pool -> dropout MLP head.

    The fourth block and batch norm are there for the receptive field and the speed of
    learning: with three plain blocks the model needed ~40 epochs on digits and fell for any
    shortcut (a decoy swatch) long before it learned shapes.

    Conventions other stages rely on:
    - ``cam_layer``: the last conv block, whose output Grad-CAM explains;
    - ``cam_layers``: every block's output, first to last (``evidence_grid`` picks the one the
      served evidence reads);
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
        self.cam_layers = tuple(m for m in self.body if isinstance(m, nn.ReLU))  # a tuple: no new submodules
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(4 * w, 2 * w), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * w, n_classes)
        )

    def evidence_grid(self, size: tuple[int, int]) -> tuple[Optional[nn.Module], int]:
        """(the block output the served evidence reads for a ``size`` input, its map's shorter side):
        the deepest with at least ``EVIDENCE_CELLS`` cells, else None for the input pixels (block 1's
        map is no finer, and measured less faithful)."""
        side = min(size)
        for k in range(len(self.cam_layers) - 1, 0, -1):
            if side >> k >= EVIDENCE_CELLS:  # block k+1 follows k max-pools of stride 2 (floor)
                return self.cam_layers[k], side >> k
        return None, side

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class CNNKind(ImageKind):
    """``ImageCNN``. Its ``gradcam`` evidence is Grad-CAM generalised to a finer map: gradient x
    activation at ``evidence_grid`` (the input pixels at small sizes), smoothed and squared, fused
    with the prediction's forward pass.

    At 28 px the last block's 3x3 map cannot resolve a 4x4-px swatch; this evidence can (see
    benchmarks/bench_evidence.py), and at 224 px it reads the last block as before.
    """

    name = "cnn"
    selected_by = ("", "cnn")
    network_class = ImageCNN
    # a steadier end point than a constant rate: the same round's clean accuracy swung 0.95-0.997
    lr_schedule = "cosine"

    def predict_and_explain(self, x: torch.Tensor, method: str, mc_samples: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        if method != "gradcam":
            return super().predict_and_explain(x, method, mc_samples)
        probs, evidence = self._evidence(x, None)  # one forward and one backward pass for both
        return probs, fill_empty_with_saliency(self.network, x, probs.argmax(dim=1), evidence)

    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        if method != "gradcam":
            return super().relevance(x, targets, method)
        _, evidence = self._evidence(x, targets)
        return fill_empty_with_saliency(self.network, x, targets, evidence)

    def _evidence(self, x: torch.Tensor, targets: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        layer, cells = self.network.evidence_grid(tuple(x.shape[-2:]))
        return predict_with_evidence(self.network, x, layer, sigma=EVIDENCE_SMOOTH * cells,
                                     power=EVIDENCE_POWER, target=targets)
