"""Settings from the environment, in one place.

Every setting is an environment variable (documented in README's configuration table).
A project can override the per-project settings through the ML backend's
``extra_params`` in Label Studio (a JSON object sent with ``/setup``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ATTRIBUTION_METHODS = ("gradcam", "saliency", "input_x_gradient", "integrated_gradients", "deeplift")
STRATEGIES = ("rrr", "counterexamples", "relevant", "cali", "activation_evidence")
ACQUISITIONS = ("random", "least_confidence", "margin", "entropy", "bald", "alex")
MODEL_KINDS = ("cnn", "text_cnn", "senn", "bayesian_cnn")


class ConfigError(ValueError):
    """A setting has a value the backend cannot use."""


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class ProjectSettings:
    """What may differ between projects (env defaults, overridden by extra_params)."""

    model_kind: str = ""  # "" = cnn for images, text_cnn for text
    image_size: int = 64
    attribution: str = "gradcam"
    evidence_mass: float = 0.2  # share of attribution mass kept as evidence (the thesis' lambda_1)
    evidence_regions: str = "merged"  # "merged" (one mask) or "components" (one region per component)
    slic_segments: int = 0  # >0 snaps evidence to SLIC superpixels
    strategies: tuple[str, ...] = ("rrr", "counterexamples")
    rrr_lambda: float = 10.0
    counterexamples: int = 3
    counterexample_fill: str = "substitute"  # substitute (from another task) | randomize | blur
    propagate_min_support: int = 2  # pixels / tokens marked Irrelevant on this many tasks count on all (0 = off)
    relevant_lambda: float = 1.0
    cali_lambda: float = 0.5
    senn_robustness: float = 0.0  # weight of SENN's robustness penalty (a double backward pass per step)
    senn_concepts: str = "patches"  # pixels | patches | learned
    senn_patch: int = 8
    kl_weight: float = 0.01  # Bayesian CNN: tempered KL (the exact ELBO's 1.0 collapses on small projects)
    evidence_sigma: float = 0.5  # Bayesian CNN: activation evidence scale (smaller = stronger)
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 8  # epochs without improvement of the training loss before stopping early
    holdout: float = 0.2
    min_annotations: int = 1
    acquisition: str = "entropy"
    mc_samples: int = 10
    alex_batch: int = 10
    set_uncertainty_sampling: bool = True
    checkpoint: str = ""  # user-supplied weights to start from

    def validate(self) -> "ProjectSettings":
        if self.model_kind and self.model_kind not in MODEL_KINDS:
            raise ConfigError(f"model_kind must be one of {', '.join(MODEL_KINDS)}, not {self.model_kind!r}")
        if self.attribution not in ATTRIBUTION_METHODS:
            raise ConfigError(f"attribution must be one of {', '.join(ATTRIBUTION_METHODS)}, not {self.attribution!r}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ConfigError(f"unknown feedback strategies {unknown}; choose from {', '.join(STRATEGIES)}")
        if "cali" in self.strategies and self.model_kind != "senn":
            raise ConfigError("strategy 'cali' corrects a SENN's relevances: set model_kind to 'senn'")
        if "activation_evidence" in self.strategies and self.model_kind != "bayesian_cnn":
            raise ConfigError("strategy 'activation_evidence' needs model_kind 'bayesian_cnn'")
        if self.senn_concepts not in ("pixels", "patches", "learned"):
            raise ConfigError("senn_concepts must be pixels, patches or learned")
        if self.acquisition not in ACQUISITIONS:
            raise ConfigError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, not {self.acquisition!r}")
        if self.evidence_regions not in ("merged", "components"):
            raise ConfigError("evidence_regions must be 'merged' or 'components'")
        if self.counterexample_fill not in ("randomize", "substitute", "blur"):
            raise ConfigError("counterexample_fill must be randomize, substitute or blur")
        if not 0.0 < self.evidence_mass <= 1.0:
            raise ConfigError("evidence_mass must be in (0, 1]")
        if not 16 <= self.image_size <= 1024:  # the CNN pools three times; batch norm needs 2x2 left
            raise ConfigError("image_size must be between 16 and 1024")
        if self.propagate_min_support < 0:
            raise ConfigError("propagate_min_support must be >= 0 (0 turns propagation off)")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError("holdout must be in [0, 1)")
        return self

    def with_overrides(self, params: Mapping[str, Any] | None) -> "ProjectSettings":
        """A copy with the known keys of ``params`` applied (unknown keys are ignored)."""
        if not params:
            return self
        known = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in params.items():
            if key not in known:
                continue
            current = getattr(self, key)
            try:
                if isinstance(current, bool):
                    changes[key] = value if isinstance(value, bool) else _bool(str(value))
                elif isinstance(current, tuple):
                    changes[key] = tuple(value) if isinstance(value, (list, tuple)) else _csv(str(value))
                else:
                    changes[key] = type(current)(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key}: cannot use {value!r} ({exc})") from None
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_PROJECT_ENV = {f.name: "XIL_" + f.name.upper() for f in dataclasses.fields(ProjectSettings)}


@dataclass(frozen=True)
class Settings:
    """Process-wide settings."""

    model_dir: Path = Path("./models")
    redis_url: str = ""
    queue_name: str = "ml_backend"
    label_studio_url: str = ""
    label_studio_api_key: str = ""
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    webhook_secret: str = ""
    webhook_header: str = "X-Webhook-Secret"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_body_bytes: int = 64 * 1024 * 1024
    fetch_timeout: float = 10.0
    torch_threads: int = 0  # 0 = torch's default (one per core)
    train_debounce: float = 2.0  # seconds a training job waits, so a burst of webhooks folds into it
    log_level: str = "INFO"
    project: ProjectSettings = field(default_factory=ProjectSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        project_overrides = {name: env[var] for name, var in _PROJECT_ENV.items() if var in env}
        return cls(
            model_dir=Path(env.get("MODEL_DIR", "./models")),
            redis_url=env.get("REDIS_URL", ""),
            queue_name=env.get("RQ_QUEUE_NAME", "ml_backend"),
            label_studio_url=env.get("LABEL_STUDIO_URL", env.get("LABEL_STUDIO_HOST", "")).rstrip("/"),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY", env.get("LABEL_STUDIO_ACCESS_TOKEN", "")),
            basic_auth_user=env.get("BASIC_AUTH_USER", ""),
            basic_auth_pass=env.get("BASIC_AUTH_PASS", ""),
            webhook_secret=env.get("WEBHOOK_SECRET", ""),
            webhook_header=env.get("WEBHOOK_SECRET_HEADER", "X-Webhook-Secret"),
            device=env.get("DEVICE", "auto"),
            max_body_bytes=int(env.get("MAX_BODY_BYTES", 64 * 1024 * 1024)),
            fetch_timeout=float(env.get("FETCH_TIMEOUT", 10.0)),
            train_debounce=float(env.get("TRAIN_DEBOUNCE_SECONDS", 2.0)),
            torch_threads=int(env.get("TORCH_THREADS", 0)),
            log_level=env.get("LOG_LEVEL", "INFO"),
            project=ProjectSettings().with_overrides(project_overrides).validate(),
        )

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def parse_extra_params(raw: Any) -> dict[str, Any]:
    """Label Studio sends extra_params as a JSON string, a dict or null."""
    if raw in (None, ""):
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"extra_params is not JSON: {exc.msg}") from None
        if isinstance(value, dict):
            return value
    raise ConfigError("extra_params must be a JSON object")
