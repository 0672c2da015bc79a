"""The feedback-strategy interface: one class per strategy, in one module each (like baal's heuristics).

A strategy turns the annotators' corrections into training signal, in one or both of two ways:

- ``augment``: extra examples added to the training set before the fit (CAIPI counterexamples);
- ``loss``: a term added to each mini-batch's cross-entropy (RRR, CALI, activation evidence).

A strategy names the model capability it needs (``requires``: a ``ModelKind`` capability
interface); a kind supports it by implementing that interface. Strategies register by ``name``
(``STRATEGIES``); the project's ``strategies`` setting lists those it uses, where "default" stands
for the model kind's ``default_strategies``. A new strategy is one new module in this package.
"""
from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar, Optional

import torch

from ml_backend.models.base import ModelKind
from ml_backend.plugins import Registry
from ml_backend.training.sets import Batch, Forward, TrainingSet

STRATEGIES: Registry["Strategy"] = Registry("ml_backend.training.strategies", "feedback strategy")
DEFAULT = "default"  # in the ``strategies`` setting: the model kind's own default strategies


class Strategy(ABC):
    """One way of learning from corrections; built from a project's settings."""

    name: ClassVar[str] = ""
    requires: ClassVar[type] = ModelKind
    requirement: ClassVar[str] = "it trains any model kind"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            STRATEGIES.add(cls.name, cls)

    @classmethod
    def from_settings(cls, settings: Any) -> "Strategy":
        return cls()

    def needs_input_gradients(self, batch: Batch) -> bool:
        """Whether this batch's forward pass must keep input gradients for ``loss``."""
        return False

    def adds_terms(self, data: TrainingSet) -> bool:
        """Whether ``loss`` adds a term for some example of ``data``. Where no strategy does, a fit
        on a frozen backbone's features is a logistic regression, fitted whole. Any strategy
        with a ``loss`` does, unless it says when it does not."""
        return type(self).loss is not Strategy.loss

    def augment(self, data: TrainingSet, model: ModelKind, seed: int) -> TrainingSet:
        """The training set with this strategy's extra examples (unchanged by default)."""
        return data

    def loss(self, model: ModelKind, batch: Batch, forward: Forward, parts: dict[str, float]
             ) -> Optional[torch.Tensor]:
        """A weighted term for the batch's loss, or None; logs its raw value into ``parts``."""
        return None


def strategy_names(names: tuple[str, ...], kind: type[ModelKind] = ModelKind) -> tuple[str, ...]:
    """``names`` with "default" replaced by ``kind``'s default strategies, each name once, in order."""
    out: list[str] = []
    for name in names:
        for resolved in (kind.default_strategies if name == DEFAULT else (name,)):
            if resolved not in out:
                out.append(resolved)
    return tuple(out)


def strategies_for(settings: Any, kind: type[ModelKind] = ModelKind) -> list[Strategy]:
    """The project's strategies for a model of ``kind``, in the order its settings list them."""
    return [STRATEGIES.get(name).from_settings(settings) for name in strategy_names(settings.strategies, kind)]
