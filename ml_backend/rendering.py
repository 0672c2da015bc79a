"""Inference -> Label Studio predictions: the class (Choices, with its score) and the evidence
(brush regions at the image's original size, or character spans)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ml_backend.data.prepare import PreparedTask
from ml_backend.explain.regions import evidence_regions, token_spans
from ml_backend.inference import infer, infer_multi_label, least_certain_decision
from ml_backend.labelstudio.results import brush_result, choices_result, for_class, span_result
from ml_backend.project import ProjectContext
from ml_backend.store import LoadedModel


@dataclass
class Rendered:
    predictions: list[dict[str, Any]]
    probs: torch.Tensor  # (N, K) on CPU
    relevance: Optional[np.ndarray]  # (N, H, W) or (N, L) at model resolution, when evidence was computed


def render_predictions(ctx: ProjectContext, loaded: LoadedModel, prepared: list[PreparedTask],
                       with_relevance: bool = False) -> Rendered:
    """Forward pass, explanation and Label Studio results for prepared tasks (same order)."""
    schema, settings = ctx.schema, ctx.settings
    x = torch.stack([p.tensor for p in prepared])
    if schema.multi_label:
        return render_multi_label(ctx, loaded, prepared, x, with_relevance)
    inference = infer(loaded.model, x, settings.attribution, schema.has_evidence or with_relevance,
                      settings.mc_samples)
    targets = inference.probs.argmax(dim=1)
    confidence = inference.probs.gather(1, targets[:, None])[:, 0]
    out = []
    for i, item in enumerate(prepared):
        label = schema.classes[int(targets[i])]
        result = [choices_result(schema, label, float(confidence[i]))]
        if inference.relevance is not None and schema.has_evidence:
            result += evidence_results(ctx, item, inference.relevance[i])
        out.append({"model_version": loaded.version, "score": float(confidence[i]), "result": result})
    return Rendered(out, inference.probs, inference.relevance)


def render_multi_label(ctx: ProjectContext, loaded: LoadedModel, prepared: list[PreparedTask], x: torch.Tensor,
                       with_relevance: bool) -> Rendered:
    """Multi-label Choices: every class above ``multi_label_threshold``, each with its own evidence
    regions. The task's score is its least certain decision, min_k max(p_k, 1 - p_k): lower is
    more uncertain, as for a single label's confidence."""
    schema, settings = ctx.schema, ctx.settings
    inference = infer_multi_label(loaded.model, x, settings.attribution, settings.multi_label_threshold,
                                  schema.has_evidence or with_relevance, settings.mc_samples)
    probs, served = inference.probs, inference.served
    confidence = least_certain_decision(probs)
    out = []
    for i, item in enumerate(prepared):
        classes = [k for k in range(schema.n_classes) if bool(served[i, k])]
        result = [choices_result(schema, [schema.classes[k] for k in classes], float(confidence[i]))] if classes else []
        if inference.relevance is not None and schema.has_evidence:
            for k in classes:
                result += [for_class(region, schema.classes[k], k)
                           for region in evidence_results(ctx, item, inference.relevance[i, k])]
        out.append({"model_version": loaded.version, "score": float(confidence[i]), "result": result})
    # one map per task for ALEX: the served classes' evidence together
    relevance = None if inference.relevance is None else inference.relevance.sum(axis=1)
    return Rendered(out, probs, relevance)


def evidence_results(ctx: ProjectContext, item: PreparedTask, relevance: np.ndarray) -> list[dict[str, Any]]:
    """Relevance at model resolution -> BrushLabels regions at the original size, or Labels spans."""
    schema, settings = ctx.schema, ctx.settings
    if schema.object_type == "image":
        if item.frame is not None:  # the input is a crop or resize of the image: place it back
            relevance = item.frame.to_original(relevance)
        regions = evidence_regions(relevance, settings.evidence_mass, settings.evidence_regions,
                                   out_shape=item.image_size, slic_image=item.image,
                                   slic_segments=settings.slic_segments)
        return [brush_result(schema, region, score, f"evidence-{item.index}-{k}")
                for k, (region, score) in enumerate(regions)]
    n_tokens = min(len(item.tokens or []), relevance.shape[0])
    spans = token_spans(relevance[:n_tokens], (item.tokens or [])[:n_tokens], settings.evidence_mass,
                        text=item.text)
    return [span_result(schema, item.text or "", start, end, score, f"evidence-{item.index}-{k}")
            for k, (start, end, score) in enumerate(spans)]
