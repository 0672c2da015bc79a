"""Interactive pre-annotation, the adapter: the regions an annotator drew -> the counterfactual
prediction (class and score before and after, and the evidence on the counterfactual input) as
read-only Label Studio results that never touch the annotator's own choice."""
from __future__ import annotations

from typing import Any, Optional

from ml_backend.data.prepare import PreparedTask, marks_on_input
from ml_backend.explain.counterfactual import replaced_positions
from ml_backend.feedback.parse import FeedbackError, parse_annotation
from ml_backend.inference import CounterfactualInference, infer_counterfactual, least_certain_decision
from ml_backend.labelstudio.interactive import (ContextError, Marks, as_counterfactual, interactive_schema,
                                                label_set_summary, summary, textarea_result)
from ml_backend.labelstudio.results import for_class
from ml_backend.project import ProjectContext
from ml_backend.rendering import evidence_results
from ml_backend.store import LoadedModel


def render_counterfactual(ctx: ProjectContext, loaded: LoadedModel, item: PreparedTask,
                          marks: Marks) -> Optional[dict[str, Any]]:
    """One prediction item for Label Studio; None when the marks cover nothing on the model's input.
    ContextError says which region cannot be read."""
    feedback = read_marks(ctx, loaded, item, marks)
    if feedback.irrelevant is None and feedback.relevant is None:
        return None
    model, settings = loaded.model, ctx.settings
    replaced = replaced_positions(feedback.irrelevant, feedback.relevant, model.mask_shape(item.tensor[None]))
    threshold = settings.multi_label_threshold if ctx.schema.multi_label else None
    found = infer_counterfactual(model, item.tensor, replaced, settings.attribution, settings.counterexample_fill,
                                 settings.counterexamples, settings.mc_samples, threshold=threshold,
                                 donors=loaded.donors)
    if threshold is not None:
        return multi_label_item(ctx, loaded, item, marks.mode, found, threshold)
    return counterfactual_item(ctx, loaded, item, marks.mode, found)


def read_marks(ctx: ProjectContext, loaded: LoadedModel, item: PreparedTask, marks: Marks) -> Any:
    """The marks as masks on the model's input, read as training reads an annotation's."""
    check_sizes(marks, item)
    spec = loaded.model.input_spec()
    try:
        feedback = parse_annotation({"id": 0, "result": marks.regions}, {"id": 0, "data": {}}, ctx.schema,
                                    image_size=spec.image_size, max_len=spec.max_len, text=item.text,
                                    tokens=item.tokens)
    except FeedbackError as exc:
        raise ContextError("params.context: " + str(exc).removeprefix("annotation 0: ")) from None
    return marks_on_input(feedback, item)


def check_sizes(marks: Marks, item: PreparedTask) -> None:
    """Brush regions must be drawn on this task's image: its size, as Label Studio sends it."""
    if item.image_size is None:
        return
    height, width = item.image_size
    for region in marks.regions:
        size = (region.get("original_width"), region.get("original_height"))
        if all(isinstance(v, int) for v in size) and size != (width, height):
            raise ContextError(f"params.context: a region drawn on a {size[0]} x {size[1]} image, but the task's "
                               f"image is {width} x {height}")


def counterfactual_item(ctx: ProjectContext, loaded: LoadedModel, item: PreparedTask, mode: str,
                        found: CounterfactualInference) -> dict[str, Any]:
    """The prediction item: a summary text and the counterfactual's evidence, both read-only, and
    the same facts as data under ``counterfactual``."""
    schema, classes = ctx.schema, ctx.schema.classes
    before = (classes[int(found.before.argmax())], float(found.before.max()))
    after = (classes[int(found.after.argmax())], float(found.after.max()))
    where = interactive_schema(ctx.label_config, schema)
    result = []
    if where.text_name is not None:
        result.append(textarea_result(schema, where.text_name, summary(mode, before, after)))
    if where.evidence_label is not None and schema.has_evidence:
        result += [as_counterfactual(region, schema, where.evidence_label, f"counterfactual-{k}")
                   for k, region in enumerate(evidence_results(ctx, item, found.relevance))]
    return {"model_version": loaded.version, "score": after[1], "result": result,
            "counterfactual": {"mode": mode, "before": {"label": before[0], "score": before[1]},
                               "after": {"label": after[0], "score": after[1]}, "changed": before[0] != after[0]}}


def multi_label_item(ctx: ProjectContext, loaded: LoadedModel, item: PreparedTask, mode: str,
                     found: CounterfactualInference, threshold: float) -> dict[str, Any]:
    """Multi-label Choices: the classes served before and after (above ``threshold``), each class
    served after with its evidence on the counterfactual input. The score is the least certain
    decision after, as /predict scores a multi-label task."""
    schema, classes = ctx.schema, ctx.schema.classes
    before = [k for k, p in enumerate(found.before.tolist()) if p > threshold]
    after = [k for k, p in enumerate(found.after.tolist()) if p > threshold]
    where = interactive_schema(ctx.label_config, schema)
    result = []
    if where.text_name is not None:
        line = label_set_summary(mode, [(classes[k], float(found.before[k])) for k in before],
                                 [(classes[k], float(found.after[k])) for k in after])
        result.append(textarea_result(schema, where.text_name, line))
    if where.evidence_label is not None and schema.has_evidence:
        for k in after:
            result += [as_counterfactual(for_class(region, classes[k], k), schema, where.evidence_label,
                                         f"counterfactual-c{k}-{j}")
                       for j, region in enumerate(evidence_results(ctx, item, found.relevance[k]))]

    def facts(served: list[int], probs: Any) -> dict[str, Any]:
        return {"labels": [classes[k] for k in served],
                "scores": {label: float(p) for label, p in zip(classes, probs.tolist())}}

    return {"model_version": loaded.version, "score": float(least_certain_decision(found.after)),
            "result": result, "counterfactual": {"mode": mode, "before": facts(before, found.before),
                                                 "after": facts(after, found.after), "changed": before != after}}
