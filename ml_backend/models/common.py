"""Adapter behaviour shared by image kinds and by token kinds (input gradients, captum evidence)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ml_backend.data.images import image_to_tensor
from ml_backend.data.text import (PAD_ID, Token, encode_tokens, replace_marked_ids, substitute_marked_ids,
                                  substitute_marked_spans, tokenize)
from ml_backend.explain.attribution import explain_images, explain_tokens
from ml_backend.models.base import IMAGE, TEXT, InputSpec, ModelKind, squared_gradients


REGION_GRID_MAX = 32  # cells a side of ``region_features``: marks are coarser, memory stays bounded


class ImageKind(ModelKind):
    """A network on (N, C, H, W) images with a ``cam_layer`` for Grad-CAM and dropout in its head."""

    modality = IMAGE

    @classmethod
    def default_config(cls, n_classes: int, settings: Any) -> dict[str, Any]:
        return {"n_classes": n_classes, "image_size": settings.image_size}

    def input_spec(self) -> InputSpec:
        return InputSpec(IMAGE, image_size=int(self.network.config["image_size"]))

    def encode_image(self, image: Any) -> tuple[torch.Tensor, Any]:
        """Stretched to the square input (masks and evidence are stretched back)."""
        return image_to_tensor(image, self.input_spec().image_size), None

    def to(self, device: torch.device) -> "ImageKind":
        self.network.to(device, memory_format=torch.channels_last)  # NHWC convolutions: ~2x on CPU
        return self

    def region_features(self, x: torch.Tensor, keep: bool = False) -> Optional[torch.Tensor]:
        """Hypercolumns: every spatial ReLU output of ``network.features`` (edges and shades from
        the first blocks, parts and textures from the last), on the grid of the first pooled map
        (half the input side, at most ``REGION_GRID_MAX``)."""
        network = self.network
        maps: list[torch.Tensor] = []

        def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if output.dim() == 4:
                maps.append(output)

        hooks = [m.register_forward_hook(keep) for m in network.modules() if isinstance(m, nn.ReLU)]
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                network.features(x)
        finally:
            network.train(was_training)
            for hook in hooks:
                hook.remove()
        return hypercolumns(maps, min(REGION_GRID_MAX, max(1, x.shape[-2] // 2)), min(REGION_GRID_MAX, max(1, x.shape[-1] // 2)))

    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        relevance = explain_images(self.network, x, targets, method)
        return fill_empty_with_saliency(self.network, x, targets, relevance) if method == "gradcam" else relevance

    def input_gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wrt = x if x.requires_grad else x.detach().requires_grad_(True)
        logits = self.network(wrt)
        return logits, squared_gradients(logits, wrt, reduce_dim=1, multi_label=self.multi_label)


class TextKind(ModelKind):
    """A network on (N, L) hashed token ids with ``embedding`` and ``forward_embedded``."""

    modality = TEXT

    @classmethod
    def default_config(cls, n_classes: int, settings: Any) -> dict[str, Any]:
        return {"n_classes": n_classes}

    def input_spec(self) -> InputSpec:
        config = self.network.config
        return InputSpec(TEXT, max_len=int(config["max_len"]), n_buckets=int(config["n_buckets"]))

    def encode_text(self, text: str) -> tuple[torch.Tensor, list[Token]]:
        """Hashed ids of the first ``max_len`` tokens."""
        spec, tokens = self.input_spec(), tokenize(text)
        return encode_tokens(tokens, spec.max_len, spec.n_buckets), tokens

    def mask_ids(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids aligned with the token masks (0 = padding)."""
        return x

    def replace_tokens(self, x: torch.Tensor, marked: torch.Tensor, copies: int,
                       generator: torch.Generator, pool: Optional[list[tuple[int, ...]]] = None) -> torch.Tensor:
        """(copies, *x.shape) with the marked tokens replaced (counterexamples): each marked run by
        another span from ``pool`` (spans marked elsewhere), else each token by an id from the
        pool, or by random others."""
        if pool:
            spliced = substitute_marked_spans(x, marked, copies, pool, generator)
            if spliced is not None:
                return spliced
            ids = torch.unique(torch.tensor([t for span in pool for t in span], dtype=x.dtype))
            if ids.numel() >= 2:
                return substitute_marked_ids(x, marked & (x != PAD_ID), copies, ids, generator)
        return replace_marked_ids(x, marked, copies, 1, self.input_spec().n_buckets, generator)

    def region_features(self, x: torch.Tensor, keep: bool = False) -> Optional[torch.Tensor]:
        """(N, L, D): each token's embedding with the network's view of it in context."""
        network = self.network
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                return network.token_features(x)
        finally:
            network.train(was_training)

    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        return explain_tokens(self.network, x, targets, method)

    def input_gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.network.embedding(x)
        logits = self.network.forward_embedded(emb, x != PAD_ID)
        return logits, squared_gradients(logits, emb, reduce_dim=2, multi_label=self.multi_label)


def fill_empty_with_saliency(network: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                             relevance: torch.Tensor) -> torch.Tensor:
    """Grad-CAM is all zero when no conv unit speaks positively for the class (common early in
    training); the annotator should still see where the model looks, so use its saliency."""
    empty = relevance.flatten(1).sum(1) <= 0
    if bool(empty.any()):
        relevance[empty] = explain_images(network, x[empty], targets[empty], "saliency")
    return relevance


def hypercolumns(maps: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """(N, sum of channels, rows, cols): each (N, C, h, w) map averaged down or interpolated up to
    the grid, then concatenated."""
    resized = [F.adaptive_avg_pool2d(m, (rows, cols)) if m.shape[-2] >= rows and m.shape[-1] >= cols
               else F.interpolate(m, size=(rows, cols), mode="bilinear", align_corners=False) for m in maps]
    return torch.cat([m.float() for m in resized], dim=1)
