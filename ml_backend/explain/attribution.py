"""Attribution methods by name, computed with captum.

Images get one non-negative relevance per input pixel, texts one per token. Every method is
a single captum ``attribute`` call; the model is put in eval mode for it (dropout off, so the
explanation belongs to the deterministic prediction) and its previous mode is restored.
Serving fuses its evidence with the prediction instead (``predict_with_gradcam``,
``predict_with_evidence``: one forward and one backward pass for both).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator, Optional

import torch
from captum.attr import (
    DeepLift,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)
from torch import Tensor, nn

from ml_backend.data.text import PAD_ID

METHODS = ("gradcam", "saliency", "input_x_gradient", "integrated_gradients", "deeplift")


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    # Per module: MC-dropout sampling leaves only the dropout layers in training mode. Only those
    # are switched (a served model is in eval mode already: nothing to do on every /predict).
    training = [m for m in model.modules() if m.training]
    if training:
        model.eval()
    try:
        # Callers often predict under no_grad; every method here needs gradients.
        with torch.enable_grad():
            yield model
    finally:
        for module in training:
            module.training = True


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")


# --- images: (N, C, H, W) -> (N, H, W) -----------------------------------------------------

def _gradcam(model: nn.Module, x: Tensor, target: Tensor, **_: int) -> Tensor:
    cam = LayerGradCam(model, model.cam_layer).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]


def _saliency(model: nn.Module, x: Tensor, target: Tensor, **_: int) -> Tensor:
    return Saliency(model).attribute(x, target=target, abs=True).amax(dim=1)


def _input_x_gradient(model: nn.Module, x: Tensor, target: Tensor, **_: int) -> Tensor:
    return InputXGradient(model).attribute(x, target=target).abs().sum(dim=1)


def _integrated_gradients(model: nn.Module, x: Tensor, target: Tensor, *, n_steps: int,
                          internal_batch_size: int) -> Tensor:
    attr = IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps,
        internal_batch_size=internal_batch_size,
    )
    return attr.abs().sum(dim=1)


class _UniqueModules(nn.Module):
    """``model`` seen by captum's DeepLift with every module registered exactly once.

    DeepLift hooks modules through ``Module.apply``, which visits a module once per parent:
    ImageCNN's ``cam_layer`` alias of ``body[-1]`` would get two sets of hooks and break the
    rescale rule. (Each nn.ReLU is still used only once in the forward pass, as DeepLift needs.)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.leaves = nn.ModuleList(m for m in model.modules() if next(m.children(), None) is None)
        self._forward = model.forward  # a bound method: not registered as a submodule

    def forward(self, *args: Tensor) -> Tensor:
        return self._forward(*args)


def _deeplift(model: nn.Module, x: Tensor, target: Tensor, **_: int) -> Tensor:
    attr = DeepLift(_UniqueModules(model)).attribute(x, baselines=torch.zeros_like(x), target=target)
    return attr.abs().sum(dim=1)


_IMAGE: dict[str, Callable[..., Tensor]] = {
    "gradcam": _gradcam,
    "saliency": _saliency,
    "input_x_gradient": _input_x_gradient,
    "integrated_gradients": _integrated_gradients,
    "deeplift": _deeplift,
}


def explain_images(model: nn.Module, x: Tensor, target: Tensor, method: str = "gradcam", *,
                   n_steps: int = 16, internal_batch_size: int = 64) -> Tensor:
    """Non-negative relevance (N, H, W) of each input pixel for the ``target`` logits.

    ``gradcam`` explains ``model.cam_layer`` and is upsampled bilinearly to the input size;
    ``n_steps`` / ``internal_batch_size`` only concern integrated gradients.
    """
    _check(method)
    x = x.detach().requires_grad_()  # a leaf of our own: captum needs its gradient
    with _evaluating(model):
        attr = _IMAGE[method](model, x, target, n_steps=n_steps, internal_batch_size=internal_batch_size)
    return attr.detach().clamp_min(0.0)


def predict_with_gradcam(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(probabilities (N, K), Grad-CAM (N, H, W) of the predicted class) from ONE forward pass.

    Serving needs both; captum's LayerGradCam would run the network a second time. Same maps as
    ``explain_images(..., "gradcam")`` for the argmax class.
    """
    captured: dict[str, Tensor] = {}
    handle = model.cam_layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    try:
        with _evaluating(model):
            logits = model(x.detach())
            activation = captured["a"]
            target = logits.argmax(dim=1)
            (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), activation)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    return torch.softmax(logits.detach(), dim=1), cam


def predict_with_evidence(model: nn.Module, x: Tensor, layer: Optional[nn.Module] = None, *,
                          sigma: float = 0.0, power: float = 1.0, target: Optional[Tensor] = None
                          ) -> tuple[Tensor, Tensor]:
    """(probabilities (N, K), evidence (N, H, W)) from ONE forward and ONE backward pass.

    The evidence at a position is its first-order share of the explained logit, sum_c a * dy/da
    over the channels of ``layer``'s output ``a`` (None: the input pixels, i.e. input x gradient;
    a layer followed by global average pooling gives Grad-CAM's map). It is smoothed by a
    Gaussian of ``sigma`` cells of that map BEFORE the ReLU, so that the +/- contributions of
    neighbouring pixels, which a model that ignores a region still has there, cancel instead of
    each showing up; then raised to ``power`` (scaled to a peak of 1 first, when not 1) and
    upsampled bilinearly to the input size.
    ``target``: the classes explained (default: the predicted ones).
    """
    captured: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor) -> Tensor:
        # a leaf of our own: its gradient exists even when the weights are frozen
        captured["a"] = out.detach().requires_grad_()
        # the layers up to here ran without recording a graph (nothing flows back past the leaf);
        # the rest of the forward pass records one
        torch.set_grad_enabled(True)
        return captured["a"]

    handle = layer.register_forward_hook(keep) if layer is not None else None
    try:
        with _evaluating(model):
            inputs = x.detach().requires_grad_(layer is None)
            with torch.set_grad_enabled(layer is None):
                logits = model(inputs)
            wrt = captured["a"] if layer is not None else inputs
            explained = logits.argmax(dim=1) if target is None else target.to(logits.device).long().reshape(-1)
            (grads,) = torch.autograd.grad(logits.gather(1, explained[:, None]).sum(), wrt)
    finally:
        if handle is not None:
            handle.remove()
    share = (wrt.detach() * grads).sum(dim=1, keepdim=True)
    if sigma > 0:
        share = gaussian_blur(share, sigma)
    evidence = torch.relu(share)
    if power != 1.0:
        # scaled to a peak of 1 first: the square of a share below ~1e-19 underflows float32
        peak = evidence.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(evidence.dtype).tiny)
        evidence = (evidence / peak).pow(power)
    if evidence.shape[-2:] != x.shape[-2:]:
        evidence = LayerAttribution.interpolate(evidence, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return torch.softmax(logits.detach(), dim=1), evidence[:, 0]


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """(N, 1, h, w) maps blurred by a Gaussian of ``sigma`` cells, edges replicated.

    Two small matrix products (the maps served are a few dozen cells a side): at batch 1 a
    convolution's dispatch would cost more than the blur.
    """
    rows = _blur_matrix(maps.shape[-2], float(sigma)).to(maps.device, maps.dtype)
    cols = _blur_matrix(maps.shape[-1], float(sigma)).to(maps.device, maps.dtype)
    return rows @ maps @ cols.T


@lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float) -> Tensor:
    """(n, n): row i = the Gaussian around i, taps beyond the edges folded onto the edge cells."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    at = (torch.arange(n)[:, None] + torch.arange(-radius, radius + 1)[None, :]).clamp(0, n - 1)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.scatter_add_(1, at, kernel.expand(n, -1).contiguous())
    return matrix.float()


# --- texts: (N, L) token ids -> (N, L) -----------------------------------------------------

class _FromEmbeddings(nn.Module):
    """The text model from its embedding outputs on, so captum attributes to the embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, emb: Tensor, pad_mask: Tensor) -> Tensor:
        return self.model.forward_embedded(emb, pad_mask)


def explain_tokens(model: nn.Module, ids: Tensor, target: Tensor, method: str = "gradcam", *,
                   n_steps: int = 16, internal_batch_size: int = 64) -> Tensor:
    """Non-negative relevance (N, L) of each token, zero on padding.

    Attributions are taken w.r.t. the embedding outputs (through ``model.forward_embedded``)
    and summed in absolute value over the embedding dimension. There is no convolutional map
    worth explaining in a token model, so ``gradcam`` falls back to input x gradient. The
    baseline of integrated gradients and DeepLift is the zero embedding, i.e. padding.
    TextCNN's non-linearities are functional (``torch.relu``, masked max), which DeepLift's
    rules do not hook, so on it ``deeplift`` currently equals ``input_x_gradient``.
    """
    _check(method)
    with _evaluating(model):
        pad_mask = ids != PAD_ID
        emb = model.embedding(ids).detach().requires_grad_()
        wrapped = _FromEmbeddings(model)
        extra = (pad_mask,)
        if method == "saliency":
            attr = Saliency(wrapped).attribute(emb, target=target, abs=True, additional_forward_args=extra)
        elif method in ("input_x_gradient", "gradcam"):
            attr = InputXGradient(wrapped).attribute(emb, target=target, additional_forward_args=extra)
        elif method == "integrated_gradients":
            attr = IntegratedGradients(wrapped).attribute(
                emb, baselines=torch.zeros_like(emb), target=target, additional_forward_args=extra,
                n_steps=n_steps, internal_batch_size=internal_batch_size,
            )
        else:
            attr = DeepLift(wrapped).attribute(
                emb, baselines=torch.zeros_like(emb), target=target, additional_forward_args=extra
            )
    return attr.detach().abs().sum(dim=-1) * pad_mask
