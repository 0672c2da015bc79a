"""Bayes-by-backprop layers with the local reparameterisation trick (LRT), and a Bayesian CNN.

Each weight has a factorised Gaussian posterior N(mu, softplus(rho)^2) and a N(0, prior_sigma^2)
prior (the thesis uses 0.1). With the LRT the layer samples its pre-activations, whose Gaussian
mean and variance follow from the input, instead of the weights: cheaper, lower variance, and
a sample per example. KL(q || p) is in closed form.

Sampling: a layer samples when its ``sample`` flag is True, uses the mean weights when False, and
follows ``self.training`` when it is None (the default: sampled in training, mean weights in eval).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_backend.models.base import ActivationEvidenceModel
from ml_backend.models.cnn import CNNKind, ImageCNN


class _BayesLayer(nn.Module, ABC):
    """Shared parameters, KL and sampling switch; subclasses define the mean op ``_op``."""

    def __init__(self, weight_shape: tuple[int, ...], fan_in: int, prior_sigma: float,
                 init_sigma: float, bias: bool = True) -> None:
        super().__init__()
        self.prior_sigma = prior_sigma
        self.sample: bool | None = None
        bound = 1 / math.sqrt(fan_in)  # nn.Linear / nn.Conv2d's default init scale
        rho = math.log(math.expm1(init_sigma))
        self.weight_mu = nn.Parameter(torch.empty(weight_shape).uniform_(-bound, bound))
        self.weight_rho = nn.Parameter(torch.full(weight_shape, rho))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(weight_shape[0]).uniform_(-bound, bound))
            self.bias_rho = nn.Parameter(torch.full((weight_shape[0],), rho))
        else:
            self.bias_mu = self.bias_rho = None

    @abstractmethod
    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The deterministic layer (linear or convolution) with the given weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self._op(x, self.weight_mu, self.bias_mu)
        sampling = self.training if self.sample is None else self.sample
        if not sampling:
            return mean
        bias_var = None if self.bias_rho is None else F.softplus(self.bias_rho) ** 2
        var = self._op(x * x, F.softplus(self.weight_rho) ** 2, bias_var)
        return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, s^2)) = sum log(s/sigma) + (sigma^2 + mu^2) / (2 s^2) - 1/2."""
        s = self.prior_sigma
        total = 0.0
        for mu, rho in ((self.weight_mu, self.weight_rho), (self.bias_mu, self.bias_rho)):
            if mu is None:
                continue
            sigma = F.softplus(rho)
            total = total + (math.log(s) - torch.log(sigma) + (sigma ** 2 + mu ** 2) / (2 * s * s) - 0.5).sum()
        return total


class BayesLinear(_BayesLayer):
    def __init__(self, in_features: int, out_features: int, prior_sigma: float = 0.1,
                 init_sigma: float = 1e-3) -> None:
        super().__init__((out_features, in_features), in_features, prior_sigma, init_sigma)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, weight, bias)


class BayesConv2d(_BayesLayer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, prior_sigma: float = 0.1, init_sigma: float = 1e-3, bias: bool = True) -> None:
        super().__init__((out_channels, in_channels, kernel_size, kernel_size),
                         in_channels * kernel_size ** 2, prior_sigma, init_sigma, bias)
        self.stride, self.padding = stride, padding

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)


class BayesianCNN(nn.Module):
    """``ImageCNN``'s shape with Bayesian layers: four conv blocks (Bayesian conv, batch norm, ReLU;
    max-pool after the first three) -> global average pool -> Bayesian MLP head. No dropout: the
    stochasticity is in the weights.

    Conventions shared with ``ImageCNN`` (so its served evidence works unchanged): ``body``,
    ``cam_layer``, ``cam_layers``, ``evidence_grid``, ``features`` / ``head``. Both halves are
    stochastic when sampling, so MC samples redo the whole pass (``mc_logits``).
    ``forward_clamped`` gives a block's pre-activations (batch norm's output, before the ReLU), the
    units the thesis' activation evidence observes, and ``marked_cells`` which of them a mask reaches.
    """

    kind = "bayesian_cnn"
    stochastic_features = True

    def __init__(self, n_classes: int, image_size: int = 64, in_channels: int = 3, width: int = 16,
                 prior_sigma: float = 0.1, init_sigma: float = 0.01) -> None:
        super().__init__()
        self.config = dict(n_classes=n_classes, image_size=image_size, in_channels=in_channels,
                           width=width, prior_sigma=prior_sigma, init_sigma=init_sigma)
        w, p, s0 = width, prior_sigma, init_sigma

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [BayesConv2d(c_in, c_out, 3, padding=1, prior_sigma=p, init_sigma=s0, bias=False),
                    nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(in_channels, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
        )
        self.cam_layer = self.body[-1]
        self.cam_layers = tuple(m for m in self.body if isinstance(m, nn.ReLU))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            BayesLinear(4 * w, 2 * w, prior_sigma=p, init_sigma=s0), nn.ReLU(),
            BayesLinear(2 * w, n_classes, prior_sigma=p, init_sigma=s0),
        )

    evidence_grid = ImageCNN.evidence_grid  # the same map choice as ImageCNN's served evidence

    def bayes_layers(self) -> list[_BayesLayer]:
        return [m for m in self.modules() if isinstance(m, _BayesLayer)]

    @property
    def sample(self) -> bool | None:
        return self.bayes_layers()[0].sample

    @sample.setter
    def sample(self, value: bool | None) -> None:
        """True: always sample; False: always mean weights; None: sample only in train mode."""
        for layer in self.bayes_layers():
            layer.sample = value

    @contextmanager
    def sampling(self, value: bool | None = True) -> Iterator[None]:
        previous = self.sample
        self.sample = value
        try:
            yield
        finally:
            self.sample = previous

    def kl(self) -> torch.Tensor:
        return sum(layer.kl() for layer in self.bayes_layers())

    def n_weights(self) -> int:
        """How many weights have a posterior (the KL's terms, for per-weight reporting)."""
        return sum(p.numel() for layer in self.bayes_layers() for p in (layer.weight_mu, layer.bias_mu)
                   if p is not None)

    def forward_clamped(self, x: torch.Tensor, block: int, clamp: Optional[torch.Tensor] = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pre-activation of ``block`` (0-based)) from one pass.

        ``clamp`` (bool, broadcastable to that pre-activation) sets those units to 0 before the rest
        of the network: the class likelihood given a_F = 0 (thesis Eq. 5.15). The pre-activation
        returned is the unclamped one, for the evidence term.
        """
        relus, preact = 0, None
        for module in self.body:
            if isinstance(module, nn.ReLU):
                if relus == block:
                    preact = x
                    if clamp is not None:
                        x = x.masked_fill(clamp, 0.0)
                relus += 1
            x = module(x)
        if preact is None:
            raise ValueError(f"block must be in [0, {relus}), got {block}")
        return self.head(self.pool(x).flatten(1)), preact

    def marked_cells(self, mask: torch.Tensor, block: int) -> torch.Tensor:
        """(N, 1, h, w) bool: the cells of ``block``'s map whose receptive field touches a marked pixel
        of ``mask`` (N, H, W): the mask sent through the body with each conv a 3x3 max and each
        pool a 2x2 max."""
        m = mask[:, None].float()
        relus = 0
        for module in self.body:
            if isinstance(module, BayesConv2d):
                m = F.max_pool2d(m, 3, stride=1, padding=1)
            elif isinstance(module, nn.MaxPool2d):
                m = F.max_pool2d(m, 2)
            elif isinstance(module, nn.ReLU):
                if relus == block:
                    return m > 0
                relus += 1
        raise ValueError(f"no block {block}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def mc_logits(self, x: torch.Tensor, T: int = 20) -> torch.Tensor:
        """(T, N, K) logits from T weight samples (sampling forced on, batch norm in eval mode)."""
        was_training = self.training
        self.eval()
        try:
            with self.sampling(True):
                return torch.stack([self(x) for _ in range(T)])
        finally:
            self.train(was_training)

    def mc_probs(self, x: torch.Tensor, T: int = 20) -> torch.Tensor:
        """(T, N, K) softmax probabilities of ``mc_logits``."""
        return F.softmax(self.mc_logits(x, T), dim=-1)


class BayesianCNNKind(CNNKind, ActivationEvidenceModel):
    """``BayesianCNN``: predicts with its posterior's MC average, samples weights for BALD, explains
    with the CNN's served evidence on the posterior mean, and trains on a tempered ELBO."""

    name = "bayesian_cnn"
    serves_multi_label = False  # its posterior average and activation evidence are single-label
    selected_by = ("bayesian_cnn",)
    # activation evidence alone left the class-shaded background in use (docs/xil-benchmarks.md)
    default_strategies = ("activation_evidence", "counterexamples")
    network_class = BayesianCNN
    # under cosine its short fits learned too little (activation evidence on four corners, 8 epochs:
    # 0.665 against 0.875-0.924 with a constant rate)
    lr_schedule = "constant"

    @classmethod
    def default_config(cls, n_classes: int, settings: Any) -> dict[str, Any]:
        return {"n_classes": n_classes, "image_size": settings.image_size,
                "prior_sigma": settings.bayes_prior_sigma, "init_sigma": settings.bayes_init_sigma}

    @torch.no_grad()
    def probs(self, x: torch.Tensor, mc_samples: int = 10) -> torch.Tensor:
        """The posterior's MC average."""
        return self.activate(self.network.mc_logits(x, mc_samples)).mean(0)

    def predict_and_explain(self, x: torch.Tensor, method: str, mc_samples: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The MC average, and the evidence of its class on the posterior mean."""
        probs = self.probs(x, mc_samples)
        return probs, self.relevance(x, probs.argmax(dim=1), method)

    def mc_probs(self, x: torch.Tensor, T: int) -> np.ndarray:
        """Weight samples: the whole pass is stochastic, so each sample redoes it."""
        return self.activate(self.network.mc_logits(x, T)).cpu().numpy()

    def evidence_block(self, size: tuple[int, int]) -> int:
        """The block whose pre-activations take the evidence: the one the served evidence reads
        (``evidence_grid``: the deepest with >= ``EVIDENCE_CELLS`` cells a side), else the first."""
        layer, _ = self.network.evidence_grid(size)
        return 0 if layer is None else self.network.cam_layers.index(layer)

    def evidence_forward(self, x: torch.Tensor, irrelevant: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        block = self.evidence_block(tuple(x.shape[-2:]))
        cells = self.network.marked_cells(irrelevant, block)
        logits, preact = self.network.forward_clamped(x, block, cells)
        return logits, preact, cells.expand_as(preact)

    def training_terms(self, batch: Any, n_train: int, settings: Any, parts: dict[str, float]) -> Optional[torch.Tensor]:
        """The ELBO's KL, tempered by ``kl_weight`` (the exact 1.0 collapses on small projects)."""
        kl = self.network.kl()
        parts["kl"] = kl.item() / self.network.n_weights()
        return settings.kl_weight * kl / max(n_train, 1)
