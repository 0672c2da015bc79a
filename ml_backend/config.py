"""Settings from the environment, in one place.

Every setting is an environment variable (documented in README's configuration table), and this
module is the only one that reads the environment. A project can override the per-project
settings through the ML backend's ``extra_params`` in Label Studio (a JSON object sent with
``/setup``). Each setting has a type and an allowed range, checked by ``validate()``.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A setting has a value the backend cannot use."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Range:
    """The numbers a setting allows, from ``low`` to ``high``; an open end excludes its bound."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}")


@dataclass(frozen=True)
class Matching:
    """The strings a setting allows: a full match of ``pattern`` (case-insensitive)."""

    pattern: str
    description: str

    def __contains__(self, value: str) -> bool:
        return re.fullmatch(self.pattern, value, re.IGNORECASE) is not None

    def __str__(self) -> str:
        return self.description


# Linux's PATH_MAX and NAME_MAX: longer is an OSError deep in the file system calls
PATH_MAX_BYTES = 4096
NAME_MAX_BYTES = 255


def path_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot name a file ("contains a NUL character", ...); None when it can."""
    if "\x00" in value:
        return "contains a NUL character"
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a lone surrogate)"
    if len(encoded) > PATH_MAX_BYTES:
        return f"is longer than {PATH_MAX_BYTES} bytes"
    if any(len(part) > NAME_MAX_BYTES for part in encoded.split(b"/")):
        return f"has a file name longer than {NAME_MAX_BYTES} bytes"
    return None


DATABASE_SCHEMES = ("postgresql", "postgres")
# the learning rate over a fit: the model kind's own, held, or falling to 0 along a cosine
LR_SCHEDULES = ("auto", "constant", "cosine")


def database_url_problem(url: str) -> Optional[str]:
    """Why ``url`` cannot be DATABASE_URL (None when it can). Never quotes it: it holds a password."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        return "must be a postgresql:// URL (postgresql://user:password@host:5432/database)"
    if scheme.lower() not in DATABASE_SCHEMES:
        shown = f", not {scheme[:20]}://" if scheme.isascii() and scheme.isalnum() else ""
        return (f"must be a postgresql:// URL{shown} (PostgreSQL is the only database supported; unset, "
                "the annotation store is the SQLite file under MODEL_DIR)")
    try:
        urlsplit(url).port
    except ValueError:
        return "has a port that is not a number in 0-65535"
    return None


@dataclass(frozen=True)
class PathName:
    """The strings a path setting allows: what ``path_problem`` finds nothing wrong with."""

    def __contains__(self, value: str) -> bool:
        return path_problem(value) is None

    def __str__(self) -> str:
        return (f"a path in UTF-8 without NUL characters, at most {PATH_MAX_BYTES} bytes and "
                f"{NAME_MAX_BYTES} per file name")


_PATH = PathName()


def _shown(value: Any) -> str:
    """``value``'s repr for a message, cut short: a request can send megabytes."""
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:80]}... ({len(text)} characters)"


def _setting(default: Any, low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
             high_open: bool = False, allowed: Optional[Matching | PathName] = None, env: tuple[str, ...] = ()) -> Any:
    """A dataclass field with its allowed values and (process settings) its environment variables."""
    if low is not None:
        allowed = Range(low, high, low_open, high_open)
    return field(default=default, metadata={"allowed": allowed, "env": env})


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
               tuple: "a list of names", Path: "a path"}


def _coerce(label: str, value: Any, kind: type) -> Any:
    """``value`` as a ``kind``. Numbers and booleans may come as strings: environment variables
    always do, and Label Studio's extra params often do. A bool is never taken for a number."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
        elif kind is int and not isinstance(value, bool):
            number = value
            if isinstance(value, str):
                try:
                    return int(value.strip())
                except ValueError:
                    number = float(value)  # "1e3"
            if isinstance(number, int):
                return number
            if isinstance(number, float) and number.is_integer():
                return int(number)
        elif kind is float and not isinstance(value, bool):
            if isinstance(value, (str, int, float)):
                return float(value)
        elif kind is tuple:
            if isinstance(value, str):
                return _csv(value)
            if isinstance(value, (list, tuple)):
                return tuple(value)
        elif kind is Path:
            if isinstance(value, (str, os.PathLike)):
                return Path(value)
        elif kind is str:
            if isinstance(value, str):
                return value
    except (ValueError, OverflowError):
        pass
    raise ConfigError(f"{label} must be {_KIND_NAMES[kind]}, not {_shown(value)}")


def _check(label: str, value: Any, kind: type, allowed: Any) -> None:
    """ConfigError naming ``label`` unless ``value`` is a ``kind`` within ``allowed``."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is tuple:
        ok = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{label} must be {_KIND_NAMES[kind]}, not {_shown(value)}")
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{label} must be {allowed}, not {_shown(value)}")


def _kind(f: dataclasses.Field) -> type:
    """The type of field ``f``'s values: its default's (PosixPath is a Path)."""
    return Path if isinstance(f.default, Path) else type(f.default)


def _parse(label: str, value: Any, f: dataclasses.Field) -> Any:
    """``value`` for field ``f``, coerced and checked; errors name ``label``."""
    kind = _kind(f)
    value = _coerce(label, value, kind)
    _check(label, value, kind, f.metadata.get("allowed"))
    return value


def _check_fields(settings: Any) -> None:
    for f in dataclasses.fields(settings):
        if f.default is not dataclasses.MISSING:
            _check(f.name, getattr(settings, f.name), _kind(f), f.metadata.get("allowed"))


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key).lower().removeprefix("xil_"), known, n=3)
    if close:
        return f"unknown setting {key!r} (did you mean {' or '.join(repr(c) for c in close)}?)"
    return f"unknown setting {key!r}; the settings are {', '.join(sorted(known))}"


@dataclass(frozen=True)
class ProjectSettings:
    """What may differ between projects (env defaults, overridden by extra_params)."""

    model_kind: str = ""  # "" = cnn for images, text_cnn for text
    image_size: int = _setting(64, 16, 1024)  # the CNN pools three times; batch norm needs 2x2 left
    attribution: str = "gradcam"
    # share of attribution mass kept as evidence (the thesis' lambda_1)
    evidence_mass: float = _setting(0.2, 0, 1, low_open=True)
    evidence_regions: str = "merged"  # "merged" (one mask) or "components" (one region per component)
    # evidence clusters ("What the model looks at", discovery/): every training and ranking explains the
    # labelled tasks once more to cluster their evidence; false skips that work and /clusters answers 409.
    # Cluster corrections recorded before still apply at every training
    evidence_clusters: bool = True
    # <Choices choice="multiple">: every class whose probability (a sigmoid per class) is above this is served
    multi_label_threshold: float = _setting(0.5, 0, 1, low_open=True, high_open=True)
    slic_segments: int = _setting(0, 0, 10_000)  # >0 snaps evidence to SLIC superpixels
    # "default" = the model kind's own: counterexamples (cnn, text_cnn, backbones), cali +
    # counterexamples (senn), activation_evidence + counterexamples (bayesian_cnn). RRR's
    # gradient-share penalty lowered accuracy on confounders it was not tuned on
    # (docs/xil-benchmarks.md); it stays available by name
    strategies: tuple[str, ...] = ("default",)
    rrr_lambda: float = _setting(10.0, 0)
    counterexamples: int = _setting(3, 0, 100)
    counterexample_fill: str = "substitute"  # substitute (from another task) | randomize | blur
    # corrections generalise by content (feedback/concepts.py, feedback/text_concepts.py) once this
    # many tasks are corrected (images need 2 to validate a rule; text words from 1); 0 = off
    propagate_min_support: int = _setting(2, 0, 10_000)
    relevant_lambda: float = _setting(1.0, 0)
    cali_lambda: float = _setting(0.5, 0, 1, low_open=True)
    # weight of SENN's robustness penalty (a double backward pass per step)
    senn_robustness: float = _setting(0.0, 0)
    senn_concepts: str = "patches"  # pixels | patches | learned
    senn_patch: int = _setting(8, 1, 256)
    # Bayesian CNN: tempered KL (the exact ELBO's 1.0 collapses on small projects)
    kl_weight: float = _setting(0.01, 0)
    # Bayesian CNN: activation evidence scale (smaller = stronger)
    evidence_sigma: float = _setting(0.5, 0, low_open=True)
    # Bayesian CNN: the weights' prior N(0, bayes_prior_sigma^2) (the thesis' 0.1) and the posterior's
    # initial standard deviation (small, so it learns like its deterministic twin; 1e-3 left the weight
    # samples too alike for BALD)
    bayes_prior_sigma: float = _setting(0.1, 0, low_open=True)
    bayes_init_sigma: float = _setting(0.01, 0, 1, low_open=True)
    epochs: int = _setting(30, 1, 1000)
    batch_size: int = _setting(32, 1, 4096)
    learning_rate: float = _setting(1e-3, 0, 10, low_open=True)
    # epochs without improvement of the training loss before stopping early (0 stops at the first, like 1)
    patience: int = _setting(8, 0, 1000)
    # auto (the model kind's own: cosine for the CNNs, constant for the others) | cosine (the
    # learning rate falls to 0 over the fit's epochs: a steadier end point; with a constant rate the
    # CNN's clean accuracy swung 0.95-0.997 between rounds) | constant (the SENN and the Bayesian
    # CNN learn too little in short fits under cosine: docs/xil-benchmarks.md)
    lr_schedule: str = "auto"
    holdout: float = _setting(0.2, 0, 1, high_open=True)
    min_annotations: int = _setting(1, 1, 1_000_000)
    acquisition: str = "entropy"
    # among the queue's first n tasks, for every n, one predicted class holds at most this share
    # (rounded up, at least one), so a round of corrections is not all of one class, whose correction
    # cannot fix the other classes' confounders. 1 = the acquisition function's order alone; 0 =
    # the classes interleaved, which cost edge stripe and background at 1% (docs/xil-benchmarks.md)
    max_class_share: float = _setting(0.5, 0, 1)
    # within a predicted class, among its first n tasks, one group of alike evidence (k-means on the
    # evidence's region features, ranking/evidence_share.py) holds at most this share: a corrected
    # shortcut's tasks, uncertain once it is corrected, do not crowd out another shortcut's (text
    # tags, a family of three per class: entropy alone served one tag 50 times). 1 = off
    max_evidence_share: float = _setting(0.5, 0, 1)
    mc_samples: int = _setting(10, 1, 1000)
    alex_batch: int = _setting(10, 1, 10_000)
    set_uncertainty_sampling: bool = True
    checkpoint: str = _setting("", allowed=_PATH)  # user-supplied weights to start from
    # a transformers model directory (save_pretrained): absolute, or a name under MODEL_DIR/backbones
    backbone: str = _setting("", allowed=_PATH)
    train_mode: str = "auto"  # backbone: frozen (head only) | finetune (last blocks too) | auto (finetune on GPU)
    finetune_blocks: int = _setting(2, 1, 100)  # backbone blocks trained in finetune mode
    finetune_lr_scale: float = _setting(0.1, 0, 1, low_open=True)  # their learning rate, as a share of the head's
    max_windows: int = _setting(16, 1, 1024)  # text backbone: windows read per document (the rest is cut)
    # frozen backbone: MB of per-task features kept under the project's state (0 = no cache)
    feature_cache_mb: int = _setting(2048, 0, 1_000_000)

    def validate(self) -> "ProjectSettings":
        """Types and ranges. The names of extension points (model_kind, strategies, attribution,
        acquisition) are checked against their registries by ``project.check_names``."""
        _check_fields(self)
        if self.senn_concepts not in ("pixels", "patches", "learned"):
            raise ConfigError("senn_concepts must be pixels, patches or learned")
        if self.train_mode not in ("auto", "frozen", "finetune"):
            raise ConfigError("train_mode must be auto, frozen or finetune")
        if self.evidence_regions not in ("merged", "components"):
            raise ConfigError("evidence_regions must be 'merged' or 'components'")
        if self.counterexample_fill not in ("randomize", "substitute", "blur"):
            raise ConfigError("counterexample_fill must be randomize, substitute or blur")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be {' or '.join(LR_SCHEDULES)}")
        return self

    def with_overrides(self, params: Mapping[str, Any] | None) -> "ProjectSettings":
        """A copy with ``params`` applied; a key that is not a setting, or a value that does not
        fit its setting, is a ConfigError naming it."""
        if not params:
            return self
        return self._with(params, {key: key for key in params})

    def _with(self, params: Mapping[str, Any], labels: Mapping[str, str]) -> "ProjectSettings":
        """A checked copy with ``params`` applied; ``labels`` names each key in messages."""
        known = {f.name: f for f in dataclasses.fields(self)}
        unknown = [key for key in params if key not in known]
        if unknown:
            raise ConfigError("; ".join(_unknown(key, list(known)) for key in unknown))
        changes = {key: _parse(labels[key], value, known[key]) for key, value in params.items()}
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_PROJECT_ENV = {f.name: "XIL_" + f.name.upper() for f in dataclasses.fields(ProjectSettings)}

_LOG_LEVELS = Matching("debug|info|warning|error|critical", "DEBUG, INFO, WARNING, ERROR or CRITICAL")
_DEVICES = Matching(r"auto|cpu|cuda|cuda:\d+|mps", "auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class Settings:
    """Process-wide settings; ``env`` lists each one's environment variables, the first non-empty one wins."""

    model_dir: Path = _setting(Path("./models"), env=("MODEL_DIR",))
    redis_url: str = _setting("", env=("REDIS_URL",))
    # the annotation store: PostgreSQL (shared by servers and workers on several hosts); "" = the
    # SQLite file under MODEL_DIR. Not in repr: it holds a password
    database_url: str = field(default="", repr=False, metadata={"allowed": None, "env": ("DATABASE_URL",)})
    queue_name: str = _setting("ml_backend", env=("RQ_QUEUE_NAME",))
    label_studio_url: str = _setting("", env=("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"))
    label_studio_api_key: str = _setting("", env=("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"))
    basic_auth_user: str = _setting("", env=("BASIC_AUTH_USER",))
    basic_auth_pass: str = _setting("", env=("BASIC_AUTH_PASS",))
    webhook_secret: str = _setting("", env=("WEBHOOK_SECRET",))
    webhook_header: str = _setting("X-Webhook-Secret", env=("WEBHOOK_SECRET_HEADER",))
    device: str = _setting("auto", allowed=_DEVICES, env=("DEVICE",))
    max_body_bytes: int = _setting(64 * 1024 * 1024, 1, env=("MAX_BODY_BYTES",))
    fetch_timeout: float = _setting(10.0, 0, low_open=True, env=("FETCH_TIMEOUT",))
    # images with more pixels are refused before decoding (a task without a prediction)
    max_image_megapixels: float = _setting(64.0, 0, 1000, low_open=True, env=("MAX_IMAGE_MEGAPIXELS",))
    torch_threads: int = _setting(0, 0, env=("TORCH_THREADS",))  # 0 = torch's default (one per core)
    # seconds a training job waits, so a burst of webhooks folds into it
    train_debounce: float = _setting(2.0, 0, env=("TRAIN_DEBOUNCE_SECONDS",))
    # without Redis: run each job's training or ranking in a child process (false: a thread of the
    # serving process, whose webhooks and /predict then wait on the GIL while it trains)
    jobs_in_subprocess: bool = _setting(True, env=("JOBS_IN_SUBPROCESS",))
    # nice increment of the job forkserver (whose imports take seconds of CPU) and of every job it
    # forks: on CPUs they share with the serving process, webhooks and /predict come first. At 19 a
    # job keeps about 1.5% of a CPU that the server saturates (at 10: 10%), and all of an idle one.
    job_nice: int = _setting(19, 0, 19, env=("JOB_NICE",))
    log_level: str = _setting("INFO", allowed=_LOG_LEVELS, env=("LOG_LEVEL",))
    # Label Studio's Local Storage root: /data/local-files/ paths are read from there when present
    local_files_root: str = _setting("", env=("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_DOCUMENT_ROOT"))
    # where user weights (XIL_CHECKPOINT) and backbone directories may be read from, besides MODEL_DIR
    weights_dirs: tuple[str, ...] = _setting((), env=("WEIGHTS_DIRS",))
    # the HTTP server `ml-backend serve` runs: granian (HTTP in Rust: a third more webhooks per second
    # than gunicorn on one CPU) or gunicorn (gunicorn_conf.py; GUNICORN_TIMEOUT restarts a hung worker)
    http_server: str = _setting("granian", allowed=Matching("granian|gunicorn", "granian or gunicorn"),
                                env=("HTTP_SERVER",))
    # a line per HTTP request from the server: the app itself logs every /predict, webhook and job,
    # and the lines cost about 5% of a webhook's CPU
    access_log: bool = _setting(False, env=("ACCESS_LOG",))
    # the server's address, processes and threads (gunicorn_conf.py and `ml-backend serve`)
    host: str = _setting("0.0.0.0", env=("HOST",))
    port: int = _setting(9090, 1, 65535, env=("PORT",))
    bind: str = _setting("", env=("ML_BACKEND_BIND",))  # "" = host:port
    workers: int = _setting(1, 1, 64, env=("WORKERS",))
    threads: int = _setting(8, 1, 256, env=("THREADS",))
    gunicorn_timeout: int = _setting(120, 0, 86_400, env=("GUNICORN_TIMEOUT",))  # 0 = none
    project: ProjectSettings = field(default_factory=ProjectSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from ``env`` (default: the process environment); a bad value is a ConfigError
        naming its variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            # An empty variable counts as unset: compose's ${VAR:-} passes one.
            var = next((name for name in f.metadata.get("env", ()) if env.get(name)), None)
            if var is not None:
                values[f.name] = _parse(var, env[var], f)
        if "label_studio_url" in values:
            values["label_studio_url"] = values["label_studio_url"].rstrip("/")
        # Unlike process settings, an empty XIL_ variable is a value: XIL_STRATEGIES= means none.
        project_vars = {name: var for name, var in _PROJECT_ENV.items() if var in env}
        try:
            project = ProjectSettings()._with({name: env[var] for name, var in project_vars.items()}, project_vars)
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if message.startswith("XIL_") else f"XIL_ variables: {message}") from None
        return cls(**values, project=project).validate()

    def validate(self) -> "Settings":
        _check_fields(self)
        problem = database_url_problem(self.database_url) if self.database_url else None
        if problem:
            raise ConfigError(f"DATABASE_URL {problem}")
        self.project.validate()
        return self

    def replace(self, **changes: Any) -> "Settings":
        """A checked copy with ``changes``."""
        return dataclasses.replace(self, **changes).validate()

    def reaches_label_studio(self, project: str) -> bool:
        """Whether jobs can call Label Studio's API for ``project`` (a URL, a key and a numeric id)."""
        return bool(self.label_studio_url and self.label_studio_api_key) and project.isdigit()

    @property
    def gunicorn_bind(self) -> str:
        """The address gunicorn listens on."""
        return self.bind or f"{self.host}:{self.port}"


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
