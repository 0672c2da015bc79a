"""Run one model version over inputs to describe its evidence (``evidence.EvidenceDescriber``),
and turn a task's served evidence into an Irrelevant mark (a cluster correction). Tensors in,
NumPy out; the jobs read and write."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ml_backend.discovery.evidence import EvidenceDescriber
from ml_backend.discovery.thumbnails import thumbnail
from ml_backend.explain.regions import evidence_mask, token_evidence
from ml_backend.models.base import ModelKind

BATCH = 64


def describe_inputs(model: ModelKind, x: torch.Tensor, method: str, mc_samples: int = 10, batch: int = BATCH,
                    describer: Optional[EvidenceDescriber] = None, keep: bool = False) -> EvidenceDescriber:
    """Add model inputs ``x``'s served evidence to ``describer`` (a new one by default); returns it.
    ``keep``: the inputs are labelled tasks, described again after every training (their region
    features are kept where the kind has a feature cache)."""
    describer = describer if describer is not None else EvidenceDescriber()
    device = model.device()
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch].to(device)
        probs, relevance = model.predict_and_explain(chunk, method, mc_samples)
        with torch.no_grad():
            features = model.region_features(chunk, keep=keep)
        describer.add(torch.as_tensor(relevance).detach().cpu(), None if features is None else features.cpu(),
                      probs.detach().cpu().argmax(dim=1).numpy())
    return describer


def relevance_of(model: ModelKind, x: torch.Tensor, method: str, mc_samples: int = 10, batch: int = BATCH
                 ) -> np.ndarray:
    """The served relevance of each input, (N, H, W) or (N, L)."""
    out = []
    for start in range(0, len(x), batch):
        _, relevance = model.predict_and_explain(x[start:start + batch].to(model.device()), method, mc_samples)
        out.append(torch.as_tensor(relevance).detach().cpu().float().numpy())
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def evidence_marks(model: ModelKind, x: torch.Tensor, method: str, keep_mass: float, mc_samples: int = 10,
                   batch: int = BATCH) -> np.ndarray:
    """Each input's served evidence as a boolean mark at the model's input size: (N, H, W) for
    images (the brush mask /predict draws), (N, L) for texts (its tokens holding ``keep_mass``)."""
    relevance = relevance_of(model, x, method, mc_samples, batch)
    if relevance.ndim != 3:
        return np.stack([token_evidence(r, keep_mass) for r in relevance]) if len(relevance) else relevance.astype(bool)
    marks = np.stack([evidence_mask(r, keep_mass) for r in relevance])
    return marks


COLOUR_TOLERANCE = 0.1  # of the image's spread: the swatch's own shade, not its neighbours'
FEATURE_SIMILARITY = 0.7  # cosine of standardised region features
# Where the alike places cover more of an image than this, they are the picture itself, not a
# shortcut on it: on the suite's photographs (the class is one photograph) they covered 50-99%
# and marking them cost 24 points; a swatch, stripe or tag covers a few per cent.
FEATURE_GROWTH_CAP = 0.25


def grown_marks(model: ModelKind, x: torch.Tensor, marks: np.ndarray, colour_tolerance: float = COLOUR_TOLERANCE,
                feature_similarity: float = FEATURE_SIMILARITY, batch: int = BATCH, keep: bool = False) -> np.ndarray:
    """Image marks (N, H, W) grown over what they lie on, anywhere in their own image: the pixels
    of the marked colour, and the places whose region features are alike those under the mark.
    Served evidence covers a part of a shortcut (a tenth of a corner swatch, one corner of four);
    the model, told off that part, moves to the rest. Alike places covering more than
    ``FEATURE_GROWTH_CAP`` of an image are left out. Kinds without region features grow by colour
    alone; texts keep their marks."""
    marks = np.asarray(marks, dtype=bool)
    if marks.ndim != 3 or x.dim() != 4:
        return marks
    out = marks.copy()
    for start in range(0, len(x), batch):
        chunk, mark = x[start:start + batch].float(), torch.as_tensor(marks[start:start + batch])
        out[start:start + batch] |= _same_colour(chunk.cpu(), mark, colour_tolerance).numpy()
        with torch.no_grad():
            features = model.region_features(chunk.to(model.device()), keep=keep)
        if features is not None and features.dim() == 4:
            out[start:start + batch] |= _alike_features(features.float().cpu(), mark, feature_similarity).numpy()
    return out


def _same_colour(x: torch.Tensor, mark: torch.Tensor, tolerance: float) -> torch.Tensor:
    out = torch.zeros_like(mark)
    for i in range(len(x)):
        if mark[i].any():
            colour = x[i][:, mark[i]].quantile(0.5, dim=1)
            spread = x[i].flatten(1).std(dim=1, unbiased=False).mean().clamp_min(1e-6)
            out[i] = (x[i] - colour[:, None, None]).abs().amax(dim=0) <= tolerance * spread
    return out


def _alike_features(features: torch.Tensor, mark: torch.Tensor, similarity: float) -> torch.Tensor:
    units = F.normalize((features - features.mean(dim=(0, 2, 3), keepdim=True))
                        / features.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6), dim=1)
    share = F.adaptive_avg_pool2d(mark[:, None].float(), units.shape[2:])  # how much of each place is marked
    centres = F.normalize((units * share).sum(dim=(2, 3)), dim=1)
    alike = (torch.einsum("ndhw,nd->nhw", units, centres) >= similarity) & (share.flatten(1).sum(dim=1) > 0)[:, None, None]
    alike &= (alike.flatten(1).float().mean(dim=1) <= FEATURE_GROWTH_CAP)[:, None, None]
    return F.interpolate(alike[:, None].float(), size=mark.shape[1:], mode="nearest")[:, 0] > 0.5


def apply_cluster_corrections(examples: list, corrections: list[dict], model_of: Callable[[str], ModelKind],
                              method: str, keep_mass: float, mc_samples: int = 10) -> int:
    """Mark the evidence that the version a cluster came from served on every labelled task of a
    cluster marked irrelevant, grown over what it lies on (``grown_marks``), Irrelevant on its
    example, as an annotator's brush would (added to
    the task's own marks, never over its Relevant ones); generalisation then carries it as it
    carries theirs. ``model_of(version)`` gives that version's model (a later one's evidence has
    moved: corrections add up as the model turns from one shortcut to the next). Returns how many
    examples got marks."""
    marked: dict[int, np.ndarray] = {}
    for correction in corrections:
        members = {int(t) for t in correction.get("task_ids", [])}
        rows = [i for i, e in enumerate(examples) if e.task_id in members]
        if rows:
            model = model_of(str(correction.get("version")))
            x = torch.stack([examples[i].x for i in rows])
            marks = grown_marks(model, x, evidence_marks(model, x, method, keep_mass, mc_samples), keep=True)
            for i, mark in zip(rows, marks):
                marked[i] = marked[i] | mark if i in marked else mark
    changed = 0
    for i, mark in marked.items():
        fb = examples[i].feedback
        if fb.relevant is not None:
            mark = mark & ~np.asarray(fb.relevant, dtype=bool)
        if not mark.any():
            continue
        if fb.irrelevant is not None:
            mark = mark | np.asarray(fb.irrelevant, dtype=bool)
        kind = "irrelevant+relevant" if fb.relevant is not None and np.any(fb.relevant) else "irrelevant"
        examples[i] = replace(examples[i], feedback=replace(fb, irrelevant=mark, kind=kind))
        changed += 1
    return changed


def cluster_payload(clusters: list, task_ids: list[int], labeled: set[int], classes: tuple[str, ...],
                    version: str, number: int) -> dict:
    """The stored and served form of a version's clusters: JSON with task ids, not row indices."""
    total = len(task_ids)
    out = []
    for i, c in enumerate(clusters):
        ids = [int(task_ids[r]) for r in c.rows]
        out.append({
            "id": f"v{number}-c{i + 1}", "size": len(ids), "share": round(len(ids) / max(total, 1), 4),
            "classes": {classes[k] if k < len(classes) else str(k): n for k, n in
                        sorted(c.classes.items(), key=lambda kv: -kv[1])},
            "shortcut_score": float(c.repetition), "suspicious": bool(c.suspicious),
            "repeating": bool(c.repeating),
            "isolation": round(float(c.isolation), 4),
            "task_ids": ids, "labeled_task_ids": [t for t in ids if t in labeled],
            "representative_task_ids": [int(task_ids[r]) for r in c.representatives],
            "mean_map": [round(float(v), 5) for v in np.ravel(c.mean_map)],
        })
    return {"version": version, "tasks": total, "labeled": len(labeled), "clusters": out}


def representative_ids(payload: dict) -> list[int]:
    """Every cluster's representative task ids, once each, in cluster order."""
    return list(dict.fromkeys(t for c in payload["clusters"] for t in c["representative_task_ids"]))


def add_thumbnails(payload: dict, model: ModelKind, x: torch.Tensor, task_ids: Sequence[int], method: str,
                   keep_mass: float, mc_samples: int = 10, tokens: Optional[Sequence[Any]] = None) -> dict:
    """Give each cluster of ``payload`` its ``thumbnails``: its representatives' inputs (rows of
    ``x``, ids ``task_ids``; ``tokens`` per row for texts) with the served evidence drawn on them,
    recomputed for these inputs only. Representatives missing from ``task_ids`` get none."""
    relevance = relevance_of(model, x, method, mc_samples) if len(task_ids) else np.zeros((0,))
    drawn = {int(t): thumbnail(int(t), x[i], relevance[i], keep_mass, None if tokens is None else tokens[i])
             for i, t in enumerate(task_ids)}
    for c in payload["clusters"]:
        c["thumbnails"] = [drawn[t] for t in c["representative_task_ids"] if t in drawn]
    return payload
