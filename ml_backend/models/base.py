"""The model-kind interface: one adapter class per kind of network says everything it can do.

Like captum's ``attr`` (one class per method, one call), every kind wraps its network in a
``ModelKind`` subclass that declares:

- what input it reads (``input_spec``) and how a task's image or text becomes that input
  (``encode_image`` / ``encode_text``);
- how it turns input into probabilities (``probs``) and MC samples (``mc_probs``);
- where its evidence comes from (``predict_and_explain`` / ``relevance``);
- which feedback strategies it supports (``supports``: a strategy names the capability it needs,
  a kind has it by implementing that capability's interface, e.g. ``ConceptExplainer``);
- its own training terms (``training_terms``: a Bayesian KL, SENN's concept losses) and quality
  metrics (``quality``).

Nothing outside ``ml_backend/models`` asks a network ``hasattr`` or compares kind names: it asks
the adapter. Kinds register themselves by ``name`` (``KINDS``); a new kind is one new module here.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_backend.models.sampling import mc_dropout_probs
from ml_backend.plugins import Registry

KINDS: Registry["ModelKind"] = Registry("ml_backend.models", "model kind")

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class InputSpec:
    """What a network reads: images at ``image_size`` squared (None: the backbone's processor
    decides, and marks are read at the original size), or ``max_len`` token positions (hashed
    into ``n_buckets`` ids for the token CNNs)."""

    modality: str
    image_size: Optional[int] = None
    max_len: Optional[int] = None
    n_buckets: Optional[int] = None


class ModelKind(ABC):
    """An adapter around one network of a kind. Subclasses register by ``name``.

    ``selected_by`` lists the ``model_kind`` setting values that pick this kind for its modality
    ("" is the modality's default), among the kinds that use a backbone or among those that don't.
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = IMAGE
    selected_by: ClassVar[tuple[str, ...]] = ()
    uses_backbone: ClassVar[bool] = False  # selected when the project names a pretrained backbone
    network_class: ClassVar[type[nn.Module]]
    # whether the kind can train and serve multi-label Choices (a sigmoid per class, ``multi_label``)
    serves_multi_label: ClassVar[bool] = True
    # what the ``strategies`` entry "default" stands for with this kind (docs/xil-benchmarks.md)
    default_strategies: ClassVar[tuple[str, ...]] = ("counterexamples",)
    # the learning-rate schedule ``lr_schedule=auto`` gives the kind's fits ("constant" or "cosine")
    lr_schedule: ClassVar[str] = "constant"
    multi_label: bool = False  # this model's outputs are independent per-class sigmoids (set per project)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            KINDS.add(cls.name, cls)

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    # construction -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def default_config(cls, n_classes: int, settings: Any) -> dict[str, Any]:
        """Constructor kwargs of a new network for a project (``settings``: its ProjectSettings)."""

    @classmethod
    def create(cls, config: dict[str, Any]) -> "ModelKind":
        return cls(cls.network_class(**config))

    def fits(self, settings: Any) -> bool:
        """Whether this model is still the one a project's settings ask for (a warm start)."""
        return True

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.network.config)

    @abstractmethod
    def input_spec(self) -> InputSpec:
        """What prepared input this network reads."""

    def mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """The shape of one example's marks on a batch ``x``: (H, W) pixels or (L,) tokens."""
        if self.modality == IMAGE:
            return tuple(x.shape[-2:])
        return (int(self.input_spec().max_len),)

    def encode_image(self, image: Any) -> tuple[torch.Tensor, Any]:
        """A PIL image -> (input tensor, its ``data.frame.Frame``, or None when stretched whole)."""
        raise TypeError(f"model kind {self.name!r} reads no images")

    def encode_text(self, text: str) -> tuple[torch.Tensor, list[Any]]:
        """A text -> (input tensor, its tokens with character offsets, in mask order)."""
        raise TypeError(f"model kind {self.name!r} reads no text")

    @classmethod
    def supports(cls, strategy: Any) -> bool:
        """Whether a feedback strategy (its class) can train this kind."""
        return issubclass(cls, strategy.requires)

    def to(self, device: torch.device) -> "ModelKind":
        self.network.to(device)
        return self

    def device(self) -> torch.device:
        p = next(self.network.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # prediction ---------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities: a softmax over classes, or a sigmoid per class (multi-label)."""
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    @torch.no_grad()
    def probs(self, x: torch.Tensor, mc_samples: int = 10) -> torch.Tensor:
        """(N, K) predictive probabilities in eval mode."""
        self.network.eval()
        return self.activate(self.network(x))

    def mc_probs(self, x: torch.Tensor, T: int) -> np.ndarray:
        """(T, N, K) samples of the predictive distribution (for BALD): MC dropout, the features once
        and the dropout head T times."""
        return mc_dropout_probs(self.network, x, T, sigmoid=self.multi_label)

    # evidence -----------------------------------------------------------------------------
    @abstractmethod
    def relevance(self, x: torch.Tensor, targets: torch.Tensor, method: str) -> torch.Tensor:
        """Non-negative relevance per pixel (N, H, W) or token (N, L) for the target classes."""

    def predict_and_explain(self, x: torch.Tensor, method: str, mc_samples: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities (N, K), relevance of the predicted class); kinds may fuse the two."""
        probs = self.probs(x, mc_samples)
        return probs, self.relevance(x, probs.argmax(dim=1), method)

    def region_features(self, x: torch.Tensor, keep: bool = False) -> Optional[torch.Tensor]:
        """The model's own representation at every place of its input, the space a marked
        region's concept lives in (``feedback.concepts``): (N, D, h, w) on a grid over an image
        input, or (N, L, D) per token. None: the kind has none to give. ``keep``: they will be
        asked again (labelled tasks, every training): a kind with a feature cache keeps them."""
        return None

    # training -----------------------------------------------------------------------------
    @abstractmethod
    def input_gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, squared input gradient per pixel (N, H, W) or token (N, L)) with the graph
        kept for a second backward pass (right-for-the-right-reasons penalties)."""

    def use_feature_cache(self, cache: Any) -> None:
        """Read the features of a part that does not train from ``cache`` (the project's
        ``feature_cache.FeatureCache``; None: compute them); kinds without such a part ignore it."""

    def frozen_features(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """What the part of the network that does not train computes from ``x``, so that a fit runs
        it once per example and trains the rest on it (``logits_from_frozen``); None: it all trains,
        nothing is worth computing ahead."""
        return None

    def logits_from_frozen(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (in the network's current mode) from ``frozen_features``. Without a frozen part
        the features are the input itself."""
        return self.logits(features)

    def set_feature_statistics(self, features: torch.Tensor) -> None:
        """Standardise the head's input to the statistics of ``frozen_features`` it is fitted on
        (kinds with a frozen part; nothing by default)."""

    def training_terms(self, batch: Any, n_train: int, settings: Any,
                       parts: dict[str, float]) -> Optional[torch.Tensor]:
        """The kind's own loss terms for a batch (added to cross-entropy), logging into ``parts``."""
        return None

    def quality(self, x: torch.Tensor) -> dict[str, Optional[float]]:
        """Explanation-quality metrics recorded with a version (none by default)."""
        return {}

    def version_notes(self, x: torch.Tensor, task_ids: list[int]) -> dict[str, Any]:
        """Extra facts recorded with a version (e.g. which tasks show each learned concept)."""
        return {}

    def checkpoint(self, classes: tuple[str, ...]) -> dict[str, Any]:
        return {"kind": self.name, "config": self.config, "classes": list(classes),
                "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()}}

    def load_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Weights from a checkpoint (all of them, by default)."""
        self.network.load_state_dict(state_dict)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]

    def parameter_groups(self, learning_rate: float, settings: Any) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, each with its learning rate (one group by default)."""
        return [{"params": self.trainable_parameters(), "lr": learning_rate}]


def squared_gradients(logits: torch.Tensor, wrt: torch.Tensor, reduce_dim: int,
                      multi_label: bool = False) -> torch.Tensor:
    """d sum_k log p_k / d wrt, squared and summed over ``reduce_dim``; graph kept. Multi-label:
    p_k is each class's own sigmoid."""
    log_p = F.logsigmoid(logits) if multi_label else F.log_softmax(logits, dim=1)
    (grads,) = torch.autograd.grad(log_p.sum(), wrt, create_graph=True)
    return grads.pow(2).sum(dim=reduce_dim)


# --- capabilities that feedback strategies ask for ------------------------------------------

class ConceptExplainer(ABC):
    """A self-explaining kind: logits are sums of concept relevances (CALI corrects those)."""

    @abstractmethod
    def explanation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N, K), concepts h (N, D), relevances theta (N, D, K)) from one pass."""

    @abstractmethod
    def concept_mask(self, mask: torch.Tensor) -> Optional[torch.Tensor]:
        """A pixel (N, H, W) or token (N, L) mask as a concept mask (N, D); None if not mappable."""

    @abstractmethod
    def without_concepts(self, x: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """``x`` with the concepts marked in ``concepts`` (N, D) bool removed (h = 0 for them)."""


class ActivationEvidenceModel(ABC):
    """A kind whose conv pre-activations can take the thesis' activation evidence."""

    @abstractmethod
    def evidence_forward(self, x: torch.Tensor, irrelevant: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits with the marked units clamped to 0, the layer's unclamped pre-activations
        (N, C, h, w), the marked units (N, C, h, w) bool) for pixel masks ``irrelevant`` (N, H, W)."""
