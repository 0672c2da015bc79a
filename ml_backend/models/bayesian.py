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
from ml_backend.models.common import ImageKind


class _BayesLayer(nn.Module, ABC):
    """Shared parameters, KL and sampling switch; subclasses define the mean op ``_op``."""

    def __init__(self, weight_shape: tuple[int, ...], fan_in: int, prior_sigma: float,
                 init_sigma: float) -> None:
        super().__init__()
        self.prior_sigma = prior_sigma
        self.sample: bool | None = None
        bound = 1 / math.sqrt(fan_in)  # nn.Linear / nn.Conv2d's default init scale
        rho = math.log(math.expm1(init_sigma))
        self.weight_mu = nn.Parameter(torch.empty(weight_shape).uniform_(-bound, bound))
        self.weight_rho = nn.Parameter(torch.full(weight_shape, rho))
        self.bias_mu = nn.Parameter(torch.empty(weight_shape[0]).uniform_(-bound, bound))
        self.bias_rho = nn.Parameter(torch.full((weight_shape[0],), rho))

    @abstractmethod
    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The deterministic layer (linear or convolution) with the given weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self._op(x, self.weight_mu, self.bias_mu)
        sampling = self.training if self.sample is None else self.sample
        if not sampling:
            return mean
        var = self._op(x * x, F.softplus(self.weight_rho) ** 2, F.softplus(self.bias_rho) ** 2)
        return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, s^2)) = sum log(s/sigma) + (sigma^2 + mu^2) / (2 s^2) - 1/2."""
        s = self.prior_sigma
        total = 0.0
        for mu, rho in ((self.weight_mu, self.weight_rho), (self.bias_mu, self.bias_rho)):
            sigma = F.softplus(rho)
            total = total + (math.log(s) - torch.log(sigma) + (sigma ** 2 + mu ** 2) / (2 * s * s) - 0.5).sum()
        return total


class BayesLinear(_BayesLayer):
    def __init__(self, in_features: int, out_features: int, prior_sigma: float = 0.1,
                 init_sigma: float = 1e-3) -> None:
        super().__init__((out_features, in_features), in_features, prior_sigma, init_sigma)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)


class BayesConv2d(_BayesLayer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, prior_sigma: float = 0.1, init_sigma: float = 1e-3) -> None:
        super().__init__((out_channels, in_channels, kernel_size, kernel_size),
                         in_channels * kernel_size ** 2, prior_sigma, init_sigma)
        self.stride, self.padding = stride, padding

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)


class BayesianCNN(nn.Module):
    """Three conv blocks (the earlier ImageCNN's shape, without batch norm) with Bayesian layers and
    no dropout (stochasticity is in the weights).

    - ``cam_layer``: the ReLU after the last conv (Grad-CAM target); ``last_conv`` is the conv
      itself, whose output is the pre-activation the activation-evidence loss acts on.
    - ``features`` / ``head`` exist for interface parity, but both are stochastic when sampling, so
      MC samples must redo the whole pass: use ``mc_probs`` (``stochastic_features`` says so).
    """

    kind = "bayesian_cnn"
    stochastic_features = True

    def __init__(self, n_classes: int, image_size: int = 64, in_channels: int = 3,
                 width: int = 32, prior_sigma: float = 0.1) -> None:
        super().__init__()
        self.config = dict(n_classes=n_classes, image_size=image_size, in_channels=in_channels,
                           width=width, prior_sigma=prior_sigma)
        w, p = width, prior_sigma
        self.body = nn.Sequential(
            BayesConv2d(in_channels, w, 3, padding=1, prior_sigma=p), nn.ReLU(), nn.MaxPool2d(2),
            BayesConv2d(w, 2 * w, 3, padding=1, prior_sigma=p), nn.ReLU(), nn.MaxPool2d(2),
            BayesConv2d(2 * w, 2 * w, 3, padding=1, prior_sigma=p), nn.ReLU(),
        )
        self.last_conv = self.body[-2]
        self.cam_layer = self.body[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            BayesLinear(2 * w, 2 * w, prior_sigma=p), nn.ReLU(), BayesLinear(2 * w, n_classes, prior_sigma=p)
        )

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

    def last_conv_preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2w, H/4, W/4) output of the last conv before its ReLU."""
        return self.body[:-1](x)

    def forward_with_preact(self, x: torch.Tensor, clamp: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, last-conv pre-activation) from one pass.

        ``clamp`` (bool, broadcastable to the pre-activation) sets those units to 0 before the rest
        of the network, i.e. the class likelihood given a_F = 0 (thesis Eq. 5.15). The returned
        pre-activation is the unclamped one, for the evidence term.
        """
        preact = self.last_conv_preactivation(x)
        a = preact if clamp is None else preact.masked_fill(clamp, 0.0)
        return self.head(self.pool(self.cam_layer(a)).flatten(1)), preact

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def mc_probs(self, x: torch.Tensor, T: int = 20) -> torch.Tensor:
        """(T, N, K) softmax probabilities from T weight samples (sampling forced on)."""
        with self.sampling(True):
            return torch.stack([F.softmax(self(x), dim=-1) for _ in range(T)])


class BayesianCNNKind(ImageKind, ActivationEvidenceModel):
    """``BayesianCNN``: predicts and samples with its weight posterior; trained on a tempered ELBO."""

    name = "bayesian_cnn"
    selected_by = ("bayesian_cnn",)
    network_class = BayesianCNN

    @torch.no_grad()
    def probs(self, x: torch.Tensor, mc_samples: int = 10) -> torch.Tensor:
        """The posterior's MC average."""
        self.network.eval()
        return self.network.mc_probs(x, mc_samples).mean(0)

    def mc_probs(self, x: torch.Tensor, T: int) -> np.ndarray:
        """Weight samples: the whole pass is stochastic, so each sample redoes it."""
        return self.network.mc_probs(x, T).cpu().numpy()

    def evidence_preactivation(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.last_conv_preactivation(x)

    def training_terms(self, batch: Any, n_train: int, settings: Any, parts: dict[str, float]) -> Optional[torch.Tensor]:
        """The ELBO's KL, tempered by ``kl_weight`` (the exact 1.0 collapses on small projects)."""
        kl = self.network.kl()
        parts["kl"] = kl.item()
        return settings.kl_weight * kl / max(n_train, 1)
