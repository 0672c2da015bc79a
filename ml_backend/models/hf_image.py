"""Image kind on a pretrained backbone (ResNet, ConvNeXt, ViT, DINOv2...) with a classification head.

The backbone's own image processor sizes and normalises the input (keeping the aspect or not, as
it says); ``estimate_frame`` measures where the processed pixels come from, so evidence lands at
the original coordinates and marks land on the input. Evidence is Grad-CAM on the last stage's
map for CNN families, and gradient x activation over the patch tokens entering the last block
for ViT families.

With a frozen backbone and a feature cache, each input's pooled features and its evidence map are
computed once; the head, its MC-dropout samples and the evidence's gradient (which flows through
the head, and for ViT families the last block) run on the cached map.
"""
from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ml_backend.data.frame import Frame
from ml_backend.models import backbones
from ml_backend.models.base import IMAGE, InputSpec
from ml_backend.models.common import REGION_GRID_MAX, ImageKind, hypercolumns

log = logging.getLogger(__name__)

FRAMES_CACHED = 256
TOKEN_LAYERS = 3  # a ViT's region features: its last layers' patch tokens


class BackboneImageClassifier(backbones.CachedFeatures, nn.Module):
    """backbone -> pooled features -> dropout + linear head. ``config`` says where the backbone lives."""

    pretrained_part = "backbone"

    def __init__(self, n_classes: int, backbone: str, train_mode: str = "frozen", finetune_blocks: int = 2,
                 dropout: float = 0.1, fingerprint: str = "") -> None:
        super().__init__()
        path = Path(backbone)
        if fingerprint and fingerprint != backbones.fingerprint(path):
            raise backbones.BackboneError(f"backbone {path.name} changed since this model was trained")
        pristine, self.processor = backbones.load(path, IMAGE)
        self.config = dict(n_classes=n_classes, backbone=str(path), train_mode=train_mode,
                           finetune_blocks=finetune_blocks, dropout=dropout,
                           fingerprint=fingerprint or backbones.fingerprint(path))
        self.family = backbones.IMAGE_FAMILIES[backbones.model_type(path)]
        self.backbone = copy.deepcopy(pristine)  # a project's fine-tuning must not touch the shared copy
        self.tuned_blocks = backbones.set_trainable(self.backbone, train_mode, finetune_blocks)
        width = backbones.hidden_size(self.backbone)
        self.scaler = backbones.FeatureScaler(width)  # standardised features: the head fits them as a logistic regression would
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, n_classes))
        self._frames: OrderedDict[tuple[int, int], Frame] = OrderedDict()
        self._frames_lock = threading.Lock()
        self._levels: Optional[tuple[np.ndarray, np.ndarray]] = None  # the processor's normalisation
        self.tail_ok: Optional[bool] = None  # whether ``tail`` was checked to give the pooled features

    def train(self, mode: bool = True) -> "BackboneImageClassifier":
        super().train(mode)
        backbones.set_train_mode(self.backbone, self.tuned_blocks, mode)
        return self

    def features_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features (N, D), the map evidence is read from: the last stage's (N, C, h, w), or
        the tokens entering the last block (N, T, D): after it only the class token reaches the head,
        so the last block's own output carries no gradient on the patches)."""
        return self._pooled_and_map(self.backbone(pixel_values=x, output_hidden_states=self.family == "tokens"))

    def _pooled_and_map(self, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.family == "tokens":
            return out.last_hidden_state[:, 0], out.hidden_states[-2]
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        pooled = hidden.mean(dim=(2, 3)) if pooled is None else pooled
        return pooled.flatten(1), hidden

    def _regions(self, x: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """Hypercolumns of the backbone's stages on the grid of its second-deepest one (CNN
        families), or the patch tokens of its last ``TOKEN_LAYERS`` layers on the patch grid."""
        if self.family == "tokens":
            patch = self.backbone.config.patch_size
            grid = (x.shape[-2] // patch, x.shape[-1] // patch)
            n_patches = grid[0] * grid[1]
            maps = [h[:, -n_patches:].transpose(1, 2).reshape(h.shape[0], -1, *grid) for h in hidden[-TOKEN_LAYERS:]]
            return hypercolumns(maps, *grid)
        maps = [h for h in hidden if h.dim() == 4]
        rows, cols = maps[-2].shape[-2:] if len(maps) > 1 else maps[-1].shape[-2:]
        return hypercolumns(maps, min(rows, REGION_GRID_MAX), min(cols, REGION_GRID_MAX))

    @torch.no_grad()
    def region_map(self, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """(N, D, h, w): every place's representation (``ModelKind.region_features``). With a
        frozen backbone and a cache, read from it where there, and if ``keep``, kept there with the
        pooled features (float16: a 224-px ResNet-18 input's is 0.4 MB, four times the rest)."""
        if self.caches(x):
            cached = self.cached(x, ("regions",), store=keep)
            if cached is not None:
                return cached["regions"].float()
        out = self.backbone(pixel_values=x, output_hidden_states=True)
        return self._regions(x, out.hidden_states)

    def tail(self, activation: torch.Tensor) -> torch.Tensor:
        """The pooled features from the evidence map: what the backbone computes after it (the
        pooling, or the last block and final norm of a ViT), so its gradient needs no backbone pass."""
        backbone = self.backbone
        if self.family == "tokens":
            out = backbones.blocks(backbone)[-1](activation)
            out = out[0] if isinstance(out, tuple) else out
            norm = getattr(backbone, "layernorm", None)
            return (out if norm is None else norm(out))[:, 0]
        pooler = getattr(backbone, "pooler", None)
        if pooler is not None:
            return pooler(activation).flatten(1)
        norm = getattr(backbone, "layernorm", None)  # ConvNeXt: norm of the mean
        pooled = activation.mean(dim=(2, 3))
        return pooled if norm is None else norm(pooled)

    @torch.no_grad()
    def feature_entries(self, x: torch.Tensor, need: Sequence[str] = ("pooled",)) -> dict[str, torch.Tensor]:
        """Pooled features, the evidence map where ``tail`` rebuilds the pooled features from it,
        and, when ``need``ed, the region map (one backbone pass for all)."""
        out = self.backbone(pixel_values=x, output_hidden_states=self.family == "tokens" or "regions" in need)
        pooled, activation = self._pooled_and_map(out)
        entries = {"pooled": pooled}
        if "regions" in need:
            entries["regions"] = self._regions(x, out.hidden_states).half()
        if self.tail_ok is None:  # checked on the first inputs the backbone sees
            try:
                self.tail_ok = bool(torch.allclose(self.tail(activation), pooled, rtol=1e-3, atol=1e-5))
            except Exception as exc:  # a family whose last block wants more than its input (BEiT)
                log.info("%s: evidence maps are not cached (%s)", type(self.backbone).__name__, exc)
                self.tail_ok = False
        if self.tail_ok:
            entries["map"] = activation
        return entries

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.caches(x):
            return self.cached(x)["pooled"]
        return self.features_and_map(x)[0]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.scaler(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    # input ---------------------------------------------------------------------------------
    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def frame(self, size: tuple[int, int]) -> Frame:
        """Where the processor takes the input's pixels from, for an image of ``size`` (H, W)."""
        with self._frames_lock:
            if size in self._frames:
                self._frames.move_to_end(size)
                return self._frames[size]
        if self._levels is None:
            self._levels = channel_levels(self.pixel_values)
        frame = estimate_frame(self.pixel_values, size, self._levels)
        with self._frames_lock:
            self._frames[size] = frame
            while len(self._frames) > FRAMES_CACHED:
                self._frames.popitem(last=False)
        return frame


def channel_levels(process: Any) -> tuple[np.ndarray, np.ndarray]:
    """(value of black, value of white) per channel (3, 1, 1) after a processor's normalisation."""
    black = process(Image.new("RGB", (32, 32), (0, 0, 0))).double().numpy()
    white = process(Image.new("RGB", (32, 32), (255, 255, 255))).double().numpy()
    # medians: pixels a processor pads with its own value do not count
    return (np.median(black.reshape(3, -1), axis=1)[:, None, None],
            np.median(white.reshape(3, -1), axis=1)[:, None, None])


def estimate_frame(process: Any, size: tuple[int, int],
                   levels: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Frame:
    """Measure a processor's resize / crop / pad for images of ``size`` (H, W): process coordinate
    ramps (red = x, green = y), undo the normalisation (``levels``: ``channel_levels``, measured
    once per processor), and fit the axis-aligned affine map from input pixels to original
    coordinates."""
    H, W = size
    ramp = np.zeros((H, W, 3), dtype=np.uint8)
    ramp[..., 0] = np.round(255 * (np.arange(W) + 0.5) / W)[None, :]
    ramp[..., 1] = np.round(255 * (np.arange(H) + 0.5) / H)[:, None]
    levels = levels if levels is not None else channel_levels(process)
    value = _processed_levels(process, ramp, levels)
    h, w = value.shape[1:]
    fits = []
    for channel, length, axis, extent in ((1, h, 0, H), (0, w, 1, W)):
        coord = value[channel] / 255.0 * extent  # original coordinate of each input pixel's centre
        idx = (np.arange(length) + 0.5).reshape((-1, 1) if axis == 0 else (1, -1))
        idx = np.broadcast_to(idx, coord.shape)
        keep = (value[channel] > 2) & (value[channel] < 253)  # away from clipping at the image edges
        if keep.sum() < 2 or np.ptp(idx[keep]) == 0:
            fits.append((extent / length, 0.0))
            continue
        slope, intercept = np.polyfit(idx[keep].ravel(), coord[keep].ravel(), 1)
        fits.append((float(slope), float(intercept)))
    (sy, oy), (sx, ox) = fits
    reach = measure_reach(process, size, (sy, sx), (oy, ox), levels)
    return Frame((h, w), (H, W), (sy, sx), (oy, ox), reach)


def _processed_levels(process: Any, image: np.ndarray, levels: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(3, h, w) ``image`` (H, W, 3 uint8) processed, the normalisation undone: back to 0..255."""
    black, white = levels
    gain = (white - black) / 255.0
    return (process(Image.fromarray(image)).double().numpy() - black) / np.where(np.abs(gain) > 1e-12, gain, 1.0)


def measure_reach(process: Any, size: tuple[int, int], scale: tuple[float, float], offset: tuple[float, float],
                  levels: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """How far (original pixels, per axis) a processor's resize spreads one pixel: one-pixel green
    rows and red columns across an image of ``size``, processed; the farthest input pixel centre a
    line still tints. A mark's edge spreads as far, so its marks reach as far. A first image (one
    line each way) sets the spacing of a second, whose lines sample every phase of the resize."""
    reach = _farthest_tint(process, size, scale, offset, levels, (None, None))
    spacing = tuple(2 * r + 2 * abs(s) + 3 for r, s in zip(reach, scale))
    return _farthest_tint(process, size, scale, offset, levels, spacing)


def _farthest_tint(process: Any, size: tuple[int, int], scale: tuple[float, float], offset: tuple[float, float],
                   levels: tuple[np.ndarray, np.ndarray], spacing: tuple[Optional[float], Optional[float]]
                   ) -> tuple[float, float]:
    image = np.zeros((*size, 3), dtype=np.uint8)
    lines = []
    for axis, extent in enumerate(size):
        step = extent if spacing[axis] is None else max(1, int(np.ceil(spacing[axis])))
        lines.append(np.arange(extent // 2 % step, extent, step))
    image[lines[0], :, 1] = 255
    image[:, lines[1], 0] = 255
    value = _processed_levels(process, image, levels)
    out = []
    for channel, axis in ((1, 0), (0, 1)):
        profile = value[channel].max(axis=1 - axis)
        centres = offset[axis] + (np.arange(profile.size) + 0.5) * scale[axis]
        lit = centres[profile > 0.5]
        if lit.size == 0:
            out.append(0.5 * abs(scale[axis]))
            continue
        nearest = np.abs(lit[:, None] - (lines[axis][None, :] + 0.5)).min(axis=1)
        # a quarter of an input pixel more: the fitted affine map is off by a few hundredths
        out.append(float(nearest.max()) + 0.25 * abs(scale[axis]))
    return out[0], out[1]


class BackboneImageKind(backbones.BackboneKind, ImageKind):
    """A ``transformers`` image backbone with a trained head (``backbone`` names its directory)."""

    name = "backbone_image"
    selected_by = ("", "backbone")
    uses_backbone = True
    network_class = BackboneImageClassifier

    def input_spec(self) -> InputSpec:
        return InputSpec(IMAGE)

    def to(self, device: torch.device) -> "BackboneImageKind":
        self.network.to(device)
        return self

    def encode_image(self, image: Any) -> tuple[torch.Tensor, Optional[Frame]]:
        return self.network.pixel_values(image), self.network.frame((image.height, image.width))

    def region_features(self, x: torch.Tensor, keep: bool = False) -> Optional[torch.Tensor]:
        """Hypercolumns of the backbone's stages (CNN families) or its last layers' patch tokens
        (ViT families): where a pretrained model's features tell textures, marks and parts apart."""
        network = self.network
        was_training = network.training
        network.eval()
        try:
            return network.region_map(x, keep)
        finally:
            network.train(was_training)

    def _evidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, evidence map (N, H', W') of the predicted class) from one forward pass."""
        network = self.network
        was_training = network.training
        network.eval()
        try:
            with torch.enable_grad():
                cached = network.cached(x, ("map",)) if network.caches(x) and network.tail_ok is not False else None
                if cached is not None:  # the gradient flows through the head (and a ViT's last block) only
                    activation = cached["map"].requires_grad_(True)
                    features = network.tail(activation)
                else:  # an input that wants a gradient: the frozen backbone keeps its graph
                    features, activation = network.features_and_map(x.detach().requires_grad_(True))
                logits = network.head(features)
                target = logits.argmax(dim=1)
                (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), activation)
        finally:
            network.train(was_training)
        activation = activation.detach()
        if network.family == "tokens":  # gradient x activation per patch token, on the patch grid
            patch = network.backbone.config.patch_size
            grid = (x.shape[-2] // patch, x.shape[-1] // patch)
            n_patches = grid[0] * grid[1]
            tokens = (grads * activation)[:, -n_patches:].sum(-1)
            cam = torch.relu(tokens).view(-1, 1, *grid)
        else:  # Grad-CAM on the last stage
            weights = grads.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        return torch.softmax(logits.detach(), dim=1), cam

    def predict_and_explain(self, x: torch.Tensor, method: str, mc_samples: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        if method != "gradcam":
            return super().predict_and_explain(x, method, mc_samples)
        probs, cam = self._evidence(x)
        empty = cam.flatten(1).sum(1) <= 0
        if bool(empty.any()):  # no unit spoke for the class: show where the model looks instead
            cam[empty] = super().relevance(x[empty], probs.argmax(1)[empty], "saliency")
        return probs, cam

    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        if method == "gradcam":
            probs, cam = self.predict_and_explain(x, method)
            if bool((probs.argmax(1) == targets).all()):
                return cam
            method = "input_x_gradient"  # Grad-CAM here explains the predicted class only
        return super().relevance(x, targets, method)
