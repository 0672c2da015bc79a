"""CALI (Teso 2019): pull a self-explaining network's relevances toward the corrected explanation,
and keep the corrected explanation faithful to the prediction."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from ml_backend.models.base import ConceptExplainer, ModelKind
from ml_backend.training.losses import label_loss
from ml_backend.training.sets import Batch, Forward, TrainingSet
from ml_backend.training.strategies import Strategy


def corrected_targets(shown: torch.Tensor, y: torch.Tensor, irrelevant: torch.Tensor,
                      relevant: torch.Tensor) -> torch.Tensor:
    """The corrected explanation z (N, D, K) from the shown relevances theta (N, D, K): a concept marked
    Irrelevant gets relevance 0 for every class (the model must not use it), one marked Relevant at
    least the top shown relevance for the label's class."""
    target = shown.masked_fill(irrelevant[:, :, None], 0.0)
    label = (y > 0.5 if y.dim() == 2 else F.one_hot(y, shown.shape[2]).bool())[:, None, :]  # multi-hot too
    top = shown.abs().amax(1, keepdim=True)  # (N, 1, K): each class's top shown relevance
    raised = torch.maximum(shown, top.expand_as(shown))
    return torch.where((relevant & ~irrelevant)[:, :, None] & label, raised, target)


class CALI(Strategy):
    """lambda * l_Y + (1 - lambda) * l_Z, with l_Y (cross-entropy) already in the loss at weight 1.

    l_Z, on the corrected examples, has three terms:
    - relevance: the squared distance of theta(x) to the corrected explanation z, on the corrected
      concepts (Teso's ranking loss anchored at what was shown, so it stops at z);
    - faithfulness: removing the Irrelevant concepts (h = 0) must change the logits by exactly their
      evidence, sum_F theta_F h_F, as the SENN's linear reading says (smooth L1 per logit, mean over
      classes). Without it the parameterizer carries a corrected concept into the other concepts'
      relevances (theta(x) sees the whole input): the explanation changes, the prediction does not
      (four corners: 0.66 with the relevance term alone, against 0.93-0.98);
    - the class likelihood of the example without its Irrelevant concepts: with relevance 0 and a
      faithful explanation, the prediction without them is the prediction.
    """

    name = "cali"
    requires = ConceptExplainer
    requirement = "it corrects a self-explaining network's relevances: set model_kind to 'senn'"

    def __init__(self, cali_lambda: float = 0.5) -> None:
        self.cali_lambda = cali_lambda

    @classmethod
    def from_settings(cls, settings: Any) -> "CALI":
        return cls(settings.cali_lambda)

    def adds_terms(self, data: TrainingSet) -> bool:
        return self.cali_lambda > 0 and bool((data.has_irrelevant | data.has_relevant).any())

    def loss(self, model: ModelKind, batch: Batch, forward: Forward, parts: dict[str, float]
             ) -> Optional[torch.Tensor]:
        rows = batch.has_irrelevant | batch.has_relevant
        if self.cali_lambda <= 0 or not bool(rows.any()):
            return None
        irrelevant = model.concept_mask(batch.irrelevant[rows])
        if irrelevant is None:  # learned concepts: a pixel mask does not name concepts
            return None
        relevant = model.concept_mask(batch.relevant[rows])
        x, y = batch.x[rows], batch.y[rows]
        n = len(y)
        logits, h, theta = model.explanation(torch.cat([x, model.without_concepts(x, irrelevant)]))
        logits, removed, h, theta = logits[:n], logits[n:], h[:n], theta[:n]
        shown = theta.detach()
        target = corrected_targets(shown, y, irrelevant, relevant)
        changed = (target != shown).to(theta.dtype)
        l_relevance = (0.5 * changed * (theta - target).pow(2)).sum((1, 2)).mean()
        terms = l_relevance
        marked = irrelevant.any(1)
        if bool(marked.any()):
            evidence = (theta * (h * irrelevant.to(h.dtype))[:, :, None]).sum(1)
            gap = (logits - removed - evidence)[marked]
            l_faithful = F.smooth_l1_loss(gap, torch.zeros_like(gap))
            l_removed = label_loss(removed[marked], y[marked])
            terms = terms + l_faithful + l_removed
            parts["cali_faithfulness"] = l_faithful.item()
            parts["cali_removed_ce"] = l_removed.item()
        parts["cali"] = l_relevance.item()
        return (1 - self.cali_lambda) / self.cali_lambda * terms
