"""Self-explaining neural networks (Alvarez-Melis & Jaakkola 2018): f(x)_k = sum_i theta(x)_ik h(x)_i.

The aggregator is a plain sum with no bias, so a class logit is exactly the sum of its concept
evidence theta(x)[:, i, k] * h(x)_i: the explanation *is* the computation (CALI, Teso 2019).

Conventions shared with ``ImageCNN`` / ``TextCNN``:
- ``features(x)`` is deterministic and ``head(f)`` holds the dropout, so MC-dropout ranking can reuse
  one feature pass. For SENN the features are the concepts h(x) concatenated with the
  parameterizer's trunk output; the head turns the trunk into theta(x) (dropout acts on theta only)
  and aggregates with h. ``mc_logits(x, T)`` does this for you.
- ``cam_layer`` is the parameterizer's last conv block, for captum methods that need a layer; the
  native explanation is ``evidence_map`` and needs no captum.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ml_backend.data.text import PAD_ID
from ml_backend.explain.quality import faithfulness, senn_stability
from ml_backend.models.base import ConceptExplainer
from ml_backend.models.common import ImageKind, TextKind

CONCEPT_KINDS = ("pixels", "patches", "learned")
EMBEDDING_INIT = 0.1  # scale of the text SENN's initial token embeddings (N(0, 1) * this)
Target = int | torch.Tensor


def _target_index(target: Target, n: int, device: torch.device) -> torch.Tensor:
    """(N,) long tensor of class indices from an int or a tensor."""
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=device)
    target = torch.as_tensor(target, device=device).long().reshape(-1)
    return target.expand(n) if target.numel() == 1 else target


def _select_class(theta: torch.Tensor, target: Target) -> torch.Tensor:
    """theta (N, D, K) -> (N, D) relevances of each example's target class."""
    idx = _target_index(target, theta.shape[0], theta.device)
    return theta.gather(2, idx.view(-1, 1, 1).expand(-1, theta.shape[1], 1)).squeeze(2)


def _aggregate(theta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Sum aggregator: (N, D, K) x (N, D) -> (N, K). Same ops as ``evidence`` so they agree exactly."""
    return (theta * h.unsqueeze(-1)).sum(1)


@contextmanager
def _dropout_on(module: nn.Module) -> Iterator[None]:
    """Dropout layers in train mode for MC sampling, whatever the model's mode; restored after."""
    drops = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    modes = [m.training for m in drops]
    for m in drops:
        m.train()
    try:
        yield
    finally:
        for m, mode in zip(drops, modes):
            m.train(mode)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class SENN(nn.Module):
    """Image SENN with pixel, patch or learned (autoencoder) concepts.

    - ``pixels``: h(x) = channel-mean intensity of every pixel, D = H*W.
    - ``patches``: h(x) = mean channel-mean intensity of each ``patch`` x ``patch`` cell, D = (H/p)*(W/p).
    - ``learned``: h(x) = a conv encoder's ``n_concepts`` outputs, trained with a decoder
      (reconstruction) and an L1 sparsity penalty; see ``senn_concept_losses`` below.

    theta(x) is a small CNN. For pixel/patch concepts it is fully convolutional (local features plus a
    broadcast global summary, 1x1 conv to K maps, resized to the concept grid), which keeps the
    parameter count independent of the image size and makes relevances spatially smooth; for
    learned concepts it is a linear map of the pooled features to D*K.
    """

    kind = "senn"

    def __init__(self, n_classes: int, concepts: str = "patches", image_size: int = 64,
                 in_channels: int = 3, patch: int = 8, n_concepts: int | None = None,
                 width: int = 16, dropout: float = 0.3) -> None:
        super().__init__()
        if concepts not in CONCEPT_KINDS:
            raise ValueError(f"concepts must be one of {CONCEPT_KINDS}, got {concepts!r}")
        if concepts == "patches" and image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        if concepts == "learned" and image_size % 4:
            raise ValueError(f"learned concepts need image_size divisible by 4, got {image_size}")
        self.config = dict(n_classes=n_classes, concepts=concepts, image_size=image_size,
                           in_channels=in_channels, patch=patch, n_concepts=n_concepts,
                           width=width, dropout=dropout)
        self.n_classes, self.concept_kind = n_classes, concepts
        self.image_size, self.in_channels, self.patch = image_size, in_channels, patch
        if concepts == "pixels":
            self.grid = (image_size, image_size)
        elif concepts == "patches":
            self.grid = (image_size // patch, image_size // patch)
        else:
            self.grid = None
        self.n_concepts = self.grid[0] * self.grid[1] if self.grid else (n_concepts or 10)

        w = width
        # the parameterizer: ImageCNN's blocks (conv, batch norm, ReLU); theta reads the third
        # block's map (local) and the fourth block's pooled output (global)
        self.trunk = nn.Sequential(
            *_block(in_channels, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 2 * w),
        )
        self.summary = nn.Sequential(nn.MaxPool2d(2), *_block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1))
        self.cam_layer = self.trunk[-1]
        self.trunk_size = max(image_size // 4, 1)
        self.trunk_channels = 2 * w
        self.summary_channels = 4 * w
        self.theta_dropout = nn.Dropout(dropout)
        if self.grid is not None:
            self.theta_out = nn.Conv2d(2 * w + 4 * w, n_classes, 1)
        else:
            self.theta_out = nn.Linear(4 * w, self.n_concepts * n_classes)
            s = image_size // 4
            self.encoder = nn.Sequential(
                nn.Conv2d(in_channels, w, 4, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.ReLU(),
                nn.Flatten(), nn.Linear(2 * w * s * s, self.n_concepts),
            )
            self.decoder = nn.Sequential(
                nn.Linear(self.n_concepts, 2 * w * s * s), nn.ReLU(), nn.Unflatten(1, (2 * w, s, s)),
                nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(w, in_channels, 4, stride=2, padding=1),
            )

    # -- concepts h(x) -------------------------------------------------------------------------
    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """h(x): (N, D)."""
        if self.concept_kind == "pixels":
            return x.mean(1).flatten(1)
        if self.concept_kind == "patches":
            return F.avg_pool2d(x.mean(1, keepdim=True), self.patch).flatten(1)
        return self.encoder(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Learned concepts only: reconstruction (N, C, H, W) from h."""
        if self.concept_kind != "learned":
            raise ValueError("only learned concepts have a decoder")
        return self.decoder(h)

    # -- features / head split ------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic part: [h(x), flattened trunk(x), summary(x)] as (N, D + 2w*s*s + 4w)."""
        t = self.trunk(x)
        g = self.summary(t).flatten(1)
        t = F.adaptive_avg_pool2d(t, self.trunk_size)
        return torch.cat([self.concepts(x), t.flatten(1), g], dim=1)

    def _split(self, f: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, rest = f[:, :self.n_concepts], f[:, self.n_concepts:]
        t, g = rest[:, :-self.summary_channels], rest[:, -self.summary_channels:]
        return h, (t.reshape(-1, self.trunk_channels, self.trunk_size, self.trunk_size), g)

    def _theta(self, tg: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        t, g = tg
        t, g = self.theta_dropout(t), self.theta_dropout(g)
        if self.grid is None:
            return self.theta_out(g).view(-1, self.n_concepts, self.n_classes)
        z = torch.cat([t, g[:, :, None, None].expand(-1, -1, *t.shape[2:])], dim=1)
        maps = F.interpolate(self.theta_out(z), size=self.grid, mode="bilinear", align_corners=False)
        return maps.flatten(2).transpose(1, 2)  # (N, D, K), D in row-major grid order like h

    def head(self, f: torch.Tensor) -> torch.Tensor:
        h, t = self._split(f)
        return _aggregate(self._theta(t), h)

    # -- predictions and explanations -----------------------------------------------------------
    def relevances(self, x: torch.Tensor) -> torch.Tensor:
        """theta(x): (N, D, K)."""
        return self._theta(self._split(self.features(x))[1])

    def forward_with_explanation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N, K), h (N, D), theta (N, D, K)) from one pass (one dropout sample)."""
        h, t = self._split(self.features(x))
        theta = self._theta(t)
        return _aggregate(theta, h), h, theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def evidence(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """theta(x)[:, :, target] * h(x): (N, D); sums to the target logit."""
        _, h, theta = self.forward_with_explanation(x)
        return _select_class(theta, target) * h

    def evidence_map(self, x: torch.Tensor, target: Target) -> torch.Tensor:
        """Concept evidence in pixel space, (N, H, W), summing to the target logit.

        pixels: the evidence reshaped; patches: each patch's evidence spread evenly over its pixels;
        learned: input x gradient of the locally linear model sum_i theta_i h_i(x) with theta held
        fixed (the linearisation the robustness loss enforces). It needs autograd, is exact in the
        sum only where h is linear, and is an attribution of the concepts, not a decoding of them.
        """
        if self.concept_kind == "pixels":
            return self.evidence(x, target).view(-1, *self.grid)
        if self.concept_kind == "patches":
            e = self.evidence(x, target).view(-1, 1, *self.grid) / self.patch ** 2
            return F.interpolate(e, scale_factor=self.patch, mode="nearest")[:, 0]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            theta = _select_class(self.relevances(xg), target).detach()
            (grad,) = torch.autograd.grad((theta * self.concepts(xg)).sum(), xg)
        return (grad * xg).sum(1).detach()

    def without(self, x: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """``x`` with the marked concepts (N, D) bool removed, h_i(x) = 0: their pixels set to 0."""
        if self.grid is None:
            raise ValueError("learned concepts cannot be removed from the input")
        keep = ~concepts.view(-1, 1, *self.grid)
        if self.concept_kind == "patches":
            keep = F.interpolate(keep.float(), scale_factor=self.patch, mode="nearest") > 0
        return x * keep.to(x.dtype)

    def mc_logits(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """(T, N, K) logits with dropout on theta, concepts and trunk computed once."""
        f = self.features(x)
        with _dropout_on(self):
            return torch.stack([self.head(f) for _ in range(T)])


class TextSENN(nn.Module):
    """Token-concept SENN: h_i = 1 for every real token, 0 for padding; theta from a text CNN.

    A token's evidence for class k is then its relevance theta_ik, so the logit is the sum over
    tokens of their relevances. theta sees each token's local context (two convolutions) plus a
    masked max-pooled summary of the whole text.
    """

    kind = "text_senn"

    def __init__(self, n_classes: int, n_buckets: int = 20000, max_len: int = 128,
                 embed_dim: int = 64, channels: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        self.config = dict(n_classes=n_classes, n_buckets=n_buckets, max_len=max_len,
                           embed_dim=embed_dim, channels=channels, dropout=dropout)
        self.n_classes, self.max_len, self.channels = n_classes, max_len, channels
        self.embedding = nn.Embedding(n_buckets, embed_dim, padding_idx=PAD_ID)
        with torch.no_grad():  # a token never seen in training stays close to padding: ~no evidence
            self.embedding.weight.mul_(EMBEDDING_INIT)
        self.conv1 = nn.Conv1d(embed_dim, channels, 3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.theta_dropout = nn.Dropout(dropout)
        self.theta_out = nn.Linear(2 * channels, n_classes)

    def features_embedded(self, emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """[h (N, L), local features (N, L*C)] flattened to 2-D like the other models."""
        z = torch.relu(self.conv1(emb.transpose(1, 2)))
        z = torch.relu(self.conv2(z)).transpose(1, 2)  # (N, L, C)
        return torch.cat([pad_mask.to(z.dtype), z.flatten(1)], dim=1)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.features_embedded(self.embedding(ids), ids != PAD_ID)

    def token_features(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, L, E + C): each token's embedding and theta's local view of it in context."""
        emb = self.embedding(ids)
        return torch.cat([emb, self._split(self.features_embedded(emb, ids != PAD_ID))[1]], dim=2)

    def _split(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = f.shape[1] // (1 + self.channels)
        return f[:, :length], f[:, length:].view(f.shape[0], length, self.channels)

    def _theta(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = self.theta_dropout(z)
        g = torch.nan_to_num(z.masked_fill(h.unsqueeze(-1) == 0, float("-inf")).max(1).values, neginf=0.0)
        return self.theta_out(torch.cat([z, g.unsqueeze(1).expand_as(z)], dim=2))  # (N, L, K)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        h, z = self._split(f)
        return _aggregate(self._theta(h, z), h)

    def forward_embedded(self, emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features_embedded(emb, pad_mask))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))

    def concepts(self, ids: torch.Tensor) -> torch.Tensor:
        """h: (N, L) token presence."""
        return (ids != PAD_ID).float()

    def relevances(self, ids: torch.Tensor) -> torch.Tensor:
        """theta: (N, L, K)."""
        return self._theta(*self._split(self.features(ids)))

    def forward_with_explanation(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, z = self._split(self.features(ids))
        theta = self._theta(h, z)
        return _aggregate(theta, h), h, theta

    def evidence(self, ids: torch.Tensor, target: Target) -> torch.Tensor:
        """(N, L) per-token evidence for the target class; zero on padding."""
        _, h, theta = self.forward_with_explanation(ids)
        return _select_class(theta, target) * h

    def evidence_map(self, ids: torch.Tensor, target: Target) -> torch.Tensor:
        """Same as ``evidence``: tokens are already the input units."""
        return self.evidence(ids, target)

    def without(self, ids: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """``ids`` with the marked tokens (N, L) bool removed (h_i = 0: padding in place)."""
        return ids.masked_fill(concepts, PAD_ID)

    def mc_logits(self, ids: torch.Tensor, T: int) -> torch.Tensor:
        f = self.features(ids)
        with _dropout_on(self):
            return torch.stack([self.head(f) for _ in range(T)])


@torch.no_grad()
def most_activating_examples(model: nn.Module, x: torch.Tensor, k: int = 5,
                             batch_size: int = 256) -> dict[int, torch.Tensor]:
    """Prototypes for each concept: indices into ``x`` of the k examples with the largest h_i (SENN §4)."""
    was_training = model.training
    model.eval()
    try:
        h = torch.cat([model.concepts(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
    top = h.topk(min(k, len(x)), dim=0).indices  # (k, D)
    return {i: top[:, i] for i in range(h.shape[1])}


CONCEPT_LOSS_WEIGHT = 0.1  # reconstruction + sparsity of learned concepts, against cross-entropy
QUALITY_EXAMPLES = 32


def senn_concept_losses(model: SENN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction MSE of decode(h(x)) against x, L1 sparsity mean |h|) for learned concepts."""
    h = model.concepts(x)
    return F.mse_loss(model.decode(h), x), h.abs().mean()


def senn_robustness(model: nn.Module, x: torch.Tensor, target: Optional[Target] = None) -> torch.Tensor:
    """Omega = ||grad_x f(x) - theta(x)^T J_x^h(x)||, mean over examples (SENN Eq. 3).

    With ``target`` None the norm runs over all classes (one double-backward pass per class), else
    over the target class only. Both terms are built with create_graph=True, so the penalty trains
    theta and h. For pixel concepts (J_h constant) it reduces to ||(d theta/dx)^T h||: theta must
    vary slowly where the concepts are active.
    """
    x = x.detach().requires_grad_(True)
    logits, h, theta = model.forward_with_explanation(x)
    n, _, k = theta.shape
    if target is None:
        classes = [torch.full((n,), c, dtype=torch.long, device=x.device) for c in range(k)]
    else:
        classes = [_target_index(target, n, x.device)]
    sq = torch.zeros(n, device=x.device, dtype=x.dtype)
    for c in classes:
        f_c = logits.gather(1, c[:, None]).sum()
        (grad_f,) = torch.autograd.grad(f_c, x, create_graph=True)
        theta_c = theta.gather(2, c.view(-1, 1, 1).expand(-1, theta.shape[1], 1)).squeeze(2)
        # theta_c^T J_h as a vector-Jacobian product; differentiable in theta_c and h
        (theta_j,) = torch.autograd.grad(h, x, grad_outputs=theta_c, create_graph=True)
        sq = sq + (grad_f - theta_j).pow(2).flatten(1).sum(1)
    return sq.clamp_min(1e-12).sqrt().mean()


class _SENNAdapter(ConceptExplainer):
    """What image and text SENNs share: exact relevances as evidence, CALI, quality metrics."""

    network: Any
    serves_multi_label = False  # its relevances explain one softmax class (CALI, the robustness term)

    def explanation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.network.forward_with_explanation(x)

    def without_concepts(self, x: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        return self.network.without(x, concepts)

    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        """The network's own evidence, whatever attribution method the project names."""
        self.network.eval()
        with torch.no_grad():
            return self.network.evidence_map(x, targets).clamp_min(0)

    def _removal(self) -> Optional[Callable[[torch.Tensor, int], torch.Tensor]]:
        return None

    def quality(self, x: torch.Tensor) -> dict[str, Optional[float]]:
        """Stability (images; local Lipschitz estimate) and faithfulness (relevance vs. probability drop)."""
        if len(x) == 0:
            return {}
        x = x[:QUALITY_EXAMPLES].to(self.device())
        model = self.network
        model.eval()
        with torch.no_grad():
            target = model(x).argmax(1)
            relevance = model.evidence(x, target)
        out: dict[str, Optional[float]] = {"senn_stability": None, "senn_faithfulness": None}
        if x.dtype != torch.long:
            out["senn_stability"] = senn_stability(model, x, n_samples=10, eps=0.05, target=target)
        removal = self._removal()
        if removal is not None:
            def probs(inp: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return torch.softmax(model(inp), dim=1)

            out["senn_faithfulness"] = faithfulness(probs, x, relevance, removal, target=target)
        return {k: (None if v is None or v != v else float(v)) for k, v in out.items()}


# a patch holding this share of a task's marked pixels belongs to the correction, however little of
# the patch they cover: a 4-px corner mark read at 32 px covers a third of its 8-px patch
PATCH_SHARE_OF_MARK = 1 / 16


def patches_marked(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, S, S) pixel marks -> (N, P) patch concepts: a patch is marked when most of it is marked
    or when it holds a fair share (``PATCH_SHARE_OF_MARK``) of the task's marked pixels. A mark
    never vanishes (the majority rule alone dropped small marks, and CALI had nothing to correct);
    a large mark (a background) does not take the patches it only grazes."""
    pixels = mask[:, None].float()
    covered = F.avg_pool2d(pixels, patch).flatten(1)  # share of each patch marked
    held = covered * patch * patch / pixels.flatten(1).sum(1, keepdim=True).clamp_min(1.0)  # share of the mark
    chosen = ((covered > 0.5) | (held >= PATCH_SHARE_OF_MARK)) & (covered > 0)
    spread = ~chosen.any(1, keepdim=True) & (covered > 0).any(1, keepdim=True)  # thin, over many patches
    return chosen | (spread & (held >= 0.5 * held.amax(1, keepdim=True)) & (covered > 0))


class SENNKind(_SENNAdapter, ImageKind):
    """Image ``SENN``: pixel, patch or learned concepts."""

    name = "senn"
    selected_by = ("senn",)
    # CALI alone left the class-shaded background in use (48% of the gap, docs/xil-benchmarks.md)
    default_strategies = ("cali", "counterexamples")
    network_class = SENN

    @classmethod
    def default_config(cls, n_classes: int, settings: Any) -> dict[str, Any]:
        patch = settings.senn_patch if settings.image_size % settings.senn_patch == 0 else 1
        return {"n_classes": n_classes, "image_size": settings.image_size, "concepts": settings.senn_concepts,
                "patch": patch}

    def concept_mask(self, mask: torch.Tensor) -> Optional[torch.Tensor]:
        kind = self.network.concept_kind
        if kind == "pixels":
            return mask.flatten(1)
        if kind == "patches":
            return patches_marked(mask, self.network.patch)
        return None

    def training_terms(self, batch: Any, n_train: int, settings: Any, parts: dict[str, float]) -> Optional[torch.Tensor]:
        extra = None
        if settings.senn_robustness > 0:
            omega = senn_robustness(self.network, batch.x, target=batch.y)
            extra = settings.senn_robustness * omega
            parts["robustness"] = omega.item()
        if self.network.concept_kind == "learned":
            reconstruction, sparsity = senn_concept_losses(self.network, batch.x)
            term = CONCEPT_LOSS_WEIGHT * (reconstruction + 0.1 * sparsity)
            extra = term if extra is None else extra + term
            parts["reconstruction"] = reconstruction.item()
        return extra

    def _removal(self) -> Optional[Callable[[torch.Tensor, int], torch.Tensor]]:
        """Blank concept d's pixel or patch."""
        model = self.network
        if model.concept_kind not in ("pixels", "patches"):
            return None
        p = 1 if model.concept_kind == "pixels" else model.patch
        cols = model.grid[1]

        def remove_cell(x: torch.Tensor, d: int) -> torch.Tensor:
            out = x.clone()
            r, c = divmod(d, cols)
            out[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = 0.0
            return out
        return remove_cell

    def version_notes(self, x: torch.Tensor, task_ids: list[int]) -> dict[str, Any]:
        """Each learned concept is shown through the training tasks that activate it most."""
        if self.network.concept_kind != "learned" or len(x) == 0:
            return {}
        top = most_activating_examples(self.network, x.to(self.device()), k=min(5, len(x)))
        return {"concept_examples": {str(c): [task_ids[int(i)] for i in idx] for c, idx in top.items()}}


class TextSENNKind(_SENNAdapter, TextKind):
    """``TextSENN``: one concept per token."""

    name = "text_senn"
    selected_by = ("senn", "text_senn")
    default_strategies = ("cali", "counterexamples")
    network_class = TextSENN

    def concept_mask(self, mask: torch.Tensor) -> Optional[torch.Tensor]:
        return mask

    def _removal(self) -> Optional[Callable[[torch.Tensor, int], torch.Tensor]]:
        def remove_token(ids: torch.Tensor, d: int) -> torch.Tensor:
            out = ids.clone()
            out[:, d] = PAD_ID
            return out
        return remove_token
