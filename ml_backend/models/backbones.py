"""Pretrained backbones from local ``transformers`` directories: finding, checking and loading them
offline, what each architecture family offers (pooled features, Grad-CAM map, blocks to tune), and
what the backbone kinds share (their config, checkpoints, and a frozen backbone's feature cache).

Loading never contacts a hub (``local_files_only``), even when the network is up.
``transformers`` is imported on first use, so projects without a backbone never load it.
"""
from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
import json
import logging
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ml_backend.config import ConfigError
from ml_backend.models.feature_cache import Entry, FeatureCache

# model_type -> family: how features, the evidence map and the blocks are found
IMAGE_FAMILIES = {"resnet": "stages", "convnext": "stages", "convnextv2": "stages", "regnet": "stages",
                  "bit": "stages", "vit": "tokens", "dinov2": "tokens", "deit": "tokens", "beit": "tokens"}
TEXT_FAMILIES = {"bert": "layer", "distilbert": "layer", "roberta": "layer", "xlm-roberta": "layer",
                 "electra": "layer", "albert": "albert", "deberta-v2": "layer"}

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # what a feature-cache entry holds; a new format starts a new namespace
FROZEN_BATCH = 64  # inputs per backbone pass when a fit computes its frozen features

_LOCK = threading.Lock()
_LOCK_TYPE = type(_LOCK)
_LOADED: dict[tuple[str, str], tuple[nn.Module, Any]] = {}


class BackboneError(ConfigError):
    """A backbone directory that cannot be used, and why (a 422 at /setup)."""


def resolve(name: str, model_dir: Path) -> Path:
    """An absolute directory, or a name under MODEL_DIR/backbones; BackboneError if neither."""
    path = Path(name)
    if not path.is_absolute():
        root = (Path(model_dir) / "backbones").resolve()
        path = (root / name).resolve()
        if root not in path.parents:
            raise BackboneError(f"backbone {name!r} must name a directory under MODEL_DIR/backbones")
    if not path.is_dir():
        raise BackboneError(f"backbone directory not found: {name}")
    if not (path / "config.json").is_file():
        raise BackboneError(f"backbone {name}: no config.json (export it with save_pretrained)")
    return path


def model_type(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"backbone {path.name}: config.json is not readable JSON ({exc})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(kind, str):
        raise BackboneError(f"backbone {path.name}: config.json names no model_type")
    return kind


def modality_of(path: Path) -> str:
    kind = model_type(path)
    if kind in IMAGE_FAMILIES:
        return "image"
    if kind in TEXT_FAMILIES:
        return "text"
    raise BackboneError(f"backbone {path.name}: architecture {kind!r} is not supported; images: "
                        f"{', '.join(sorted(IMAGE_FAMILIES))}; text: {', '.join(sorted(TEXT_FAMILIES))}")


def fingerprint(path: Path) -> str:
    """Changes when the backbone's config or weight files change (name, size, modification time)."""
    h = hashlib.sha1()
    for file in sorted(path.iterdir()):
        if file.is_file():
            stat = file.stat()
            h.update(f"{file.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return h.hexdigest()[:16]


def load(path: Path, modality: str) -> tuple[nn.Module, Any]:
    """(backbone model, its image processor or tokenizer), read offline and cached per process."""
    key = (str(path), fingerprint(path))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    import transformers

    try:
        # eager attention: RRR takes a second derivative through it
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
        if modality == "image":
            extra = transformers.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        else:
            extra = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except Exception as exc:  # transformers raises OSError, ValueError, RuntimeError, KeyError... for bad files
        raise BackboneError(f"backbone {path.name}: cannot load it ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300]})") from None
    if modality == "text" and not getattr(extra, "is_fast", False):
        raise BackboneError(f"backbone {path.name}: needs a fast tokenizer (tokenizer.json) for character offsets")
    with _LOCK:
        _LOADED[key] = (model, extra)
    return model, extra


def blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in order: CNN stages, or transformer layers (the outermost non-empty
    ModuleList: ``encoder.stages``, ``encoder.layer``, ``layers``, ``transformer.layer``...)."""
    lists = [(name.count("."), name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module)]
    if not lists:
        raise BackboneError(f"{type(model).__name__}: cannot find its blocks to fine-tune")
    return list(min(lists, key=lambda item: (item[0], item[1]))[2])


def hidden_size(model: nn.Module) -> int:
    config = model.config
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    for name in ("hidden_size", "dim"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise BackboneError(f"{type(model).__name__}: cannot tell its feature size")


def set_trainable(model: nn.Module, mode: str, n_blocks: int) -> list[nn.Module]:
    """frozen: nothing of the backbone trains; finetune: its last ``n_blocks`` blocks do. Returns
    the blocks that train."""
    for p in model.parameters():
        p.requires_grad_(False)
    tuned = blocks(model)[-n_blocks:] if mode == "finetune" else []
    for block in tuned:
        for p in block.parameters():
            p.requires_grad_(True)
    return tuned


def set_train_mode(model: nn.Module, tuned: Sequence[nn.Module], mode: bool) -> None:
    """Train mode for the ``tuned`` blocks alone. The rest of the backbone stays in eval mode: its
    batch-norm statistics would otherwise drift to the project's images while training, and a
    version, which stores only what trained, would serve them with the pretrained statistics."""
    model.eval()
    for block in tuned:
        block.train(mode)


def trainable_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """What a version must store: the trained parameters, the buffers of trained modules, and every
    buffer outside the pretrained part (the head's feature statistics)."""
    trained = {name for name, p in network.named_parameters() if p.requires_grad}
    owners = {name.rsplit(".", 1)[0] for name in trained}
    pretrained = getattr(network, "pretrained_part", "") + "."
    return {k: v.detach().cpu() for k, v in network.state_dict().items()
            if k in trained or k.rsplit(".", 1)[0] in owners or not k.startswith(pretrained)}


class FeatureScaler(nn.Module):
    """Standardises pooled features with the statistics of the features the head was fitted on
    (identity until fitted: versions from before the scaler read raw features)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        features = features.to(self.mean.device, self.mean.dtype)
        self.mean.copy_(features.mean(0))
        self.scale.copy_(features.std(0, unbiased=False).clamp_min(1e-6) if len(features) > 1
                         else torch.ones_like(self.scale))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.scale


def train_mode(settings: Any) -> str:
    """``auto`` is fine-tuning where there is a GPU to pay for it, a frozen backbone elsewhere."""
    if settings.train_mode == "auto":
        return "finetune" if torch.cuda.is_available() else "frozen"
    return settings.train_mode


class CachedFeatures(ABC):
    """What the backbone networks share about the feature cache: with a frozen backbone, an input's
    features come from the project's ``FeatureCache`` (computed once per backbone), never again from
    the backbone. A backbone that trains, or an input that wants its gradient (RRR, saliency), always
    runs the backbone."""

    config: dict[str, Any]
    feature_cache: Optional[FeatureCache] = None
    pretrained_part: str  # the attribute holding the pretrained model (its frozen weights are not stored)

    @abstractmethod
    def feature_entries(self, x: torch.Tensor, need: Sequence[str] = ("pooled",)) -> Entry:
        """What the cache keeps of each input (batched; ``pooled``: what the head reads), with at
        least the ``need``ed names where the network has them."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "CachedFeatures":
        """A copy of the network that shares the project's feature cache (one per directory and
        process) and has locks of its own; everything else is copied."""
        if self.feature_cache is not None:
            memo[id(self.feature_cache)] = self.feature_cache
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            fresh = threading.Lock() if isinstance(value, _LOCK_TYPE) else copy.deepcopy(value, memo)
            object.__setattr__(clone, key, fresh)
        return clone

    def use_cache(self, cache: Optional[FeatureCache]) -> None:
        if cache is not None:
            try:
                cache.claim(self.cache_namespace(), self.config["backbone"])
            except OSError as exc:  # a read-only MODEL_DIR serves without the cache
                log.warning("feature cache %s is not usable: %s", cache.root, exc)
                cache = None
        self.feature_cache = cache

    def cache_namespace(self) -> str:
        return f"{self.config['fingerprint']}-v{CACHE_FORMAT}"

    def caches(self, x: torch.Tensor) -> bool:
        """Whether ``x``'s features are read from the cache."""
        return self.feature_cache is not None and self.config["train_mode"] == "frozen" and not x.requires_grad

    def cached(self, x: torch.Tensor, need: Sequence[str] = ("pooled",), store: bool = True) -> Optional[Entry]:
        """The ``need``ed entries of a batch (None when the network does not keep one of them);
        what was computed is kept unless ``store`` is false."""
        assert self.feature_cache is not None
        return self.feature_cache.lookup(self.cache_namespace(), x, lambda rows: self.feature_entries(rows, need),
                                         need, store)


class BackboneKind:
    """What the backbone kinds share: their config from a project's settings, whether a model still
    fits them, and a checkpoint of the head and any fine-tuned blocks (the backbone's own weights
    stay in its directory; its fingerprint is in the config)."""

    name: str
    network: nn.Module
    config: dict[str, Any]

    @classmethod
    def default_config(cls, n_classes: int, settings: Any) -> dict[str, Any]:
        return {"n_classes": n_classes, "backbone": settings.backbone, "train_mode": train_mode(settings),
                "finetune_blocks": settings.finetune_blocks}

    def fits(self, settings: Any) -> bool:
        """The same backbone, unchanged, trained the same way."""
        config = self.config
        return (config["backbone"] == settings.backbone and config["train_mode"] == train_mode(settings)
                and config["fingerprint"] == fingerprint(Path(settings.backbone)))

    def checkpoint(self, classes: tuple[str, ...]) -> dict[str, Any]:
        return {"kind": self.name, "config": self.config, "classes": list(classes),
                "state_dict": trainable_state(self.network)}

    def use_feature_cache(self, cache: Optional[FeatureCache]) -> None:
        self.network.use_cache(cache)

    def parameter_groups(self, learning_rate: float, settings: Any) -> list[dict[str, Any]]:
        """The head at the learning rate, fine-tuned blocks at ``finetune_lr_scale`` of it: at the
        head's rate the pretrained blocks drift from what they learned, round after round (four
        corners, ResNet fine-tuned: 0.975 at 0.5% of corrections, 0.922 at 5%)."""
        tuned = {id(p) for block in self.network.tuned_blocks for p in block.parameters()}
        params = self.trainable_parameters()
        head = [p for p in params if id(p) not in tuned]
        blocks = [p for p in params if id(p) in tuned]
        groups = [{"params": head, "lr": learning_rate}]
        if blocks:
            groups.append({"params": blocks, "lr": learning_rate * settings.finetune_lr_scale})
        return groups

    def frozen_features(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """A frozen backbone's pooled features of ``x`` (from the cache when there is one): a fit
        runs the backbone once per example, not once per epoch."""
        if self.config["train_mode"] != "frozen":
            return None
        device = self.device()
        out = []
        with torch.no_grad():
            for chunk in x.split(FROZEN_BATCH):
                chunk = chunk.to(device)
                if chunk.dim() == 4 and chunk.is_floating_point():
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                out.append(self.network.features(chunk))
        return torch.cat(out)

    def logits_from_frozen(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.head(features)

    def set_feature_statistics(self, features: torch.Tensor) -> None:
        self.network.scaler.fit(features)

    def load_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        _, unexpected = self.network.load_state_dict(state_dict, strict=False)
        if unexpected:
            raise ValueError(f"weights for parameters the model does not have: {unexpected[:5]}")
        # versions from before the head's feature scaler read raw features: it stays the identity
        lacking = {k for k in trainable_state(self.network) if not k.startswith("scaler.")} - set(state_dict)
        if lacking:
            raise ValueError(f"checkpoint lacks trained weights: {sorted(lacking)[:5]}")
