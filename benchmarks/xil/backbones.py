"""The XIL benchmark's own pretrained backbones, trained without the target labels.

The backend's backbone kinds need a ``transformers`` directory (``save_pretrained``) whose frozen
features already say something about the data. Nothing can be downloaded, so the benchmark
pretrains its own, self-supervised, on its problems' unlabelled inputs, and saves the base model
(``AutoModel``-loadable) with its image processor or tokenizer:

- ``image_backbone("resnet")``: a 3-stage ResNet (basic blocks, widths 32/64/128) at 112 px, the
  28-px digit x4, so the last stage's map is 7x7 cells of 4x4 original pixels (the decoy
  swatch's size). ``image_backbone("vit")``: a 4-layer ViT (width 96) at 28 px with 4-px patches,
  a 7x7 patch grid (a swatch is one patch). Both learn on the 1797 plain digits, no labels, two
  objectives read from the feature the backend reads (the ResNet's ``pooler_output``, the ViT's
  class token): SimCLR (two random views of a digit, by shift, scale, rotation, shear and stroke
  width, find each other among the batch) and rotation prediction (0/90/180/270 degrees). Both
  together beat either alone (ViT, 300 steps, probe accuracy: 0.87 contrastive, 0.92 rotation,
  0.95 both). The ResNet's batch-norm statistics are then re-estimated on the plain digits, which
  is what a frozen backbone sees.
- ``text_backbone()``: a 4-layer BERT (width 96, a 64-token window) with a word-piece vocabulary of
  the reviews' words (plus characters and ``##`` pieces, so nothing is [UNK]), on generated
  reviews that carry no label: 0-3 positive and 0-3 negative words drawn independently, neutral
  words, now and then spurious tokens (in their variant forms) and phrase words. Masked-word
  prediction trains the tokens; the backend reads [CLS], which MLM leaves idle, so [CLS] also
  predicts which words the review holds (multi-label). That beat predicting the word distribution
  (softmax) or the word counts (regression) on the probes below.

Measured (``probe``, seed 0, clean test accuracy): ResNet 0.981 (built in ~250 s on one shared
core), ViT 0.961 (~250 s), BERT 0.978 on decoy_text (~170 s). A random initialisation already
passes such a probe (sklearn's digits and word-count reviews are easy for a linear model: ResNet
0.95, ViT 0.93, BERT 0.996), so the pretraining shows where labels are few: a logistic regression
on 20 labels per class reaches ResNet 0.87 -> 0.91, ViT 0.74 -> 0.88, BERT 0.70 -> 0.75 (0.80 and
0.994 in full in a run that differed only in dropout's random stream).

A backbone is built once and cached under ``.cache/xil-backbones/<name>-<hash of its recipe>``
(built in a temporary directory, then renamed). ``probe`` checks that it is useful: a logistic
regression on its frozen features of a problem's clean data, computed as the backend does.

    .venv/bin/python -m benchmarks.xil.backbones     # build all three, print their probes
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import string
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / ".cache" / "xil-backbones"
RECIPE_FORMAT = 1  # bump when the code behind a recipe changes what it builds


# --------------------------------------------------------------------------- recipes

@dataclass(frozen=True)
class ImageRecipe:
    """What an image backbone is: its architecture, input size and self-supervised schedule."""

    family: str  # "resnet" | "vit"
    input_size: int  # the processor resizes the 28-px digits to this
    architecture: tuple[tuple[str, Any], ...]  # keyword arguments of the transformers config
    steps: int
    batch_size: int  # digits per step (each seen as two contrastive views and one rotated view)
    learning_rate: float
    weight_decay: float
    objective: str = "simclr+rotation"  # "simclr", "rotation" or both
    temperature: float = 0.2  # of the contrastive loss
    rotation_weight: float = 0.5  # of the rotation loss beside the contrastive one
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.family}-digits-{self.objective.replace('+', '-')}"


@dataclass(frozen=True)
class TextRecipe:
    """What the text backbone is: its architecture, window and self-supervised schedule."""

    architecture: tuple[tuple[str, Any], ...]
    window: int = 64
    corpus_size: int = 20_000
    objective: str = "mlm+bow"  # masked words, and from [CLS] which words the review holds
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    mask_share: float = 0.15
    bow_weight: float = 1.0
    seed: int = 0

    @property
    def name(self) -> str:
        return f"bert-reviews-{self.objective.replace('+', '-')}"


IMAGE_RECIPES = {
    "resnet": ImageRecipe(
        family="resnet", input_size=112, steps=150, batch_size=96, learning_rate=2e-3, weight_decay=1e-4,
        architecture=(("embedding_size", 32), ("hidden_sizes", [32, 64, 128]), ("depths", [1, 1, 1]),
                      ("layer_type", "basic"))),
    "vit": ImageRecipe(
        family="vit", input_size=28, steps=400, batch_size=128, learning_rate=1e-3, weight_decay=5e-2,
        architecture=(("image_size", 28), ("patch_size", 4), ("hidden_size", 96), ("num_hidden_layers", 4),
                      ("num_attention_heads", 4), ("intermediate_size", 192))),
}
TEXT_RECIPE = TextRecipe(
    architecture=(("hidden_size", 96), ("num_hidden_layers", 4), ("num_attention_heads", 4),
                  ("intermediate_size", 192)))


def recipe_hash(recipe: ImageRecipe | TextRecipe) -> str:
    text = json.dumps({"format": RECIPE_FORMAT, "type": type(recipe).__name__, **dataclasses.asdict(recipe)},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- the cache

def _cached(recipe: ImageRecipe | TextRecipe, cache: Optional[Path], build) -> Path:
    """The recipe's directory under ``cache``, built by ``build(directory)`` when absent: into a
    temporary directory beside it, renamed into place once complete (a concurrent builder that
    finished first wins; its copy is kept)."""
    root = Path(cache) if cache is not None else DEFAULT_CACHE
    target = root / f"{recipe.name}-{recipe_hash(recipe)}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        started = time.perf_counter()
        build(scratch)
        recipe_record = {"recipe": dataclasses.asdict(recipe), "hash": recipe_hash(recipe),
                         "build_seconds": round(time.perf_counter() - started, 1)}
        (scratch / "xil_recipe.json").write_text(json.dumps(recipe_record, indent=1) + "\n")
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def build_seconds(directory: Path) -> Optional[float]:
    """How long the backbone in ``directory`` took to build (recorded beside it)."""
    try:
        return float(json.loads((Path(directory) / "xil_recipe.json").read_text())["build_seconds"])
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- image backbones

def image_backbone(family: str, cache: Optional[Path] = None, *, steps: Optional[int] = None) -> Path:
    """The directory of a self-supervised digit backbone ("resnet" or "vit"), built when absent.
    ``steps`` overrides the recipe's (a quick, lesser backbone, cached apart)."""
    if family not in IMAGE_RECIPES:
        raise ValueError(f"image family {family!r}: one of {', '.join(IMAGE_RECIPES)}")
    recipe = IMAGE_RECIPES[family]
    if steps is not None:
        recipe = dataclasses.replace(recipe, steps=steps)
    return build_image_backbone(recipe, cache)


def build_image_backbone(recipe: ImageRecipe, cache: Optional[Path] = None) -> Path:
    return _cached(recipe, cache, lambda directory: _pretrain_image(recipe, directory))


def _image_config(recipe: ImageRecipe):
    import transformers

    if recipe.family == "resnet":
        return transformers.ResNetConfig(**dict(recipe.architecture))
    if recipe.family == "vit":
        return transformers.ViTConfig(**dict(recipe.architecture))
    raise ValueError(f"image family {recipe.family!r}")


def _image_processor(recipe: ImageRecipe):
    import transformers

    return transformers.ViTImageProcessorPil(size={"height": recipe.input_size, "width": recipe.input_size})


class ImagePretrainer(nn.Module):
    """The backbone with the heads its objectives read from its feature: a projection for the
    contrastive loss and a 4-way rotation classifier."""

    def __init__(self, backbone: nn.Module, family: str, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 64))
        self.rotation = nn.Linear(dim, 4)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the backend reads: the ResNet's pooled output, the ViT's class token."""
        out = self.backbone(pixel_values=pixel_values)
        if self.family == "vit":
            return out.last_hidden_state[:, 0]
        return out.pooler_output.flatten(1)


def _augment(digits: torch.Tensor, size: int, generator: torch.Generator, max_shift: float = 0.12,
             scale: tuple[float, float] = (0.8, 1.15), max_degrees: float = 15.0, max_shear: float = 0.15
             ) -> torch.Tensor:
    """Random views of 28-px digits (N, 1, 28, 28) in [0, 1], at ``size`` px: strokes thinned or
    thickened (a min / max pool) for two thirds of them, then a random affine map (shift up to
    ``max_shift`` of the side, scale, rotation, shear) sampled bilinearly at the output size (the
    identity map is the processor's bilinear resize)."""
    n = digits.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    thick = F.max_pool2d(F.pad(digits, (0, 1, 0, 1)), 2, stride=1)
    thin = -F.max_pool2d(F.pad(-digits, (0, 1, 0, 1)), 2, stride=1)
    width = torch.randint(0, 3, (n, 1, 1, 1), generator=generator)
    digits = torch.where(width == 1, thick, torch.where(width == 2, thin, digits))
    angle = uniform(-max_degrees, max_degrees) * math.pi / 180
    zoom = uniform(*scale)
    shear = uniform(-max_shear, max_shear)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin + shear, uniform(-max_shift, max_shift) * 2], 1),
                         torch.stack([sin, cos, uniform(-max_shift, max_shift) * 2], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(digits, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _normalise(gray: torch.Tensor, processor: Any) -> torch.Tensor:
    """(N, 1, S, S) gray in [0, 1] -> (N, 3, S, S) as the processor normalises an RGB image."""
    mean = torch.tensor(processor.image_mean, dtype=gray.dtype).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, dtype=gray.dtype).view(1, 3, 1, 1)
    return (gray.expand(-1, 3, -1, -1) - mean) / std


def _rotate(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by a random multiple of 90 degrees, and which multiple."""
    turns = torch.randint(0, 4, (images.shape[0],), generator=generator)
    out = torch.stack([torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(images, turns)])
    return out, turns


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each view's twin is its positive among the other 2N - 1 views."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    similarity = z @ z.t() / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, twins)


def clean_digit_pixels(processor: Any) -> torch.Tensor:
    """The 1797 plain digits (no labels), processed exactly as the backend processes a task's image."""
    from PIL import Image

    from benchmarks.xil.data import _digits_28

    images, _ = _digits_28()
    rgb = [Image.fromarray(np.repeat(img[..., None], 3, axis=-1)) for img in images]
    return torch.cat([processor(images=rgb[i:i + 256], return_tensors="pt")["pixel_values"]
                      for i in range(0, len(rgb), 256)])


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then a cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _pretrain_image(recipe: ImageRecipe, directory: Path) -> None:
    import transformers

    from benchmarks.xil.data import _digits_28

    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    processor = _image_processor(recipe)
    backbone = transformers.AutoModel.from_config(_image_config(recipe))
    digits = torch.from_numpy(_digits_28()[0]).float().div(255.0)[:, None]  # the labels stay unread
    dim = backbone.config.hidden_sizes[-1] if recipe.family == "resnet" else backbone.config.hidden_size
    model = ImagePretrainer(backbone, recipe.family, dim)
    objectives = set(recipe.objective.split("+"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    scheduler = _schedule(optimizer, recipe.steps, warmup=max(1, recipe.steps // 20))
    model.train()
    for _ in range(recipe.steps):
        batch = digits[torch.randint(0, len(digits), (recipe.batch_size,), generator=generator)]
        loss = torch.zeros(())
        if "simclr" in objectives:
            views = _normalise(_augment(torch.cat([batch, batch]), recipe.input_size, generator), processor)
            features = model.features(views)
            projected = model.projection(features)
            loss = loss + contrastive_loss(projected[:len(batch)], projected[len(batch):], recipe.temperature)
        if "rotation" in objectives:
            views = _normalise(_augment(batch, recipe.input_size, generator), processor)
            turned, turns = _rotate(views, generator)
            weight = recipe.rotation_weight if "simclr" in objectives else 1.0
            loss = loss + weight * F.cross_entropy(model.rotation(model.features(turned)), turns)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    if recipe.family == "resnet":
        _reestimate_batch_norm(backbone, clean_digit_pixels(processor))
    backbone.eval()
    backbone.save_pretrained(directory)
    processor.save_pretrained(directory)


@torch.no_grad()
def _reestimate_batch_norm(backbone: nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> None:
    """Batch-norm running statistics as the plain digits give them (a cumulative average over one
    pass), not the augmented and rotated views of training: a frozen backbone sees plain images."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    backbone.train()
    for start in range(0, len(pixels), batch_size):
        backbone(pixel_values=pixels[start:start + batch_size])
    for norm in norms:
        norm.momentum = 0.1
    backbone.eval()


# --------------------------------------------------------------------------- text backbone

def text_backbone(cache: Optional[Path] = None, *, steps: Optional[int] = None) -> Path:
    """The directory of the self-supervised review encoder, built when absent. ``steps`` overrides
    the recipe's (a quick, lesser backbone, cached apart)."""
    recipe = TEXT_RECIPE if steps is None else dataclasses.replace(TEXT_RECIPE, steps=steps)
    return build_text_backbone(recipe, cache)


def build_text_backbone(recipe: TextRecipe, cache: Optional[Path] = None) -> Path:
    return _cached(recipe, cache, lambda directory: _pretrain_text(recipe, directory))


def review_words() -> list[str]:
    """Every word the generated reviews use: sentiment, neutral, spurious (with the pieces the
    variants split them into) and the spurious phrases' words."""
    from benchmarks.xil.data import NEGATIVE, NEUTRAL, POSITIVE, SPURIOUS
    from benchmarks.xil.text_data import PHRASE_WORDS, SPLITS

    pieces = [piece for split in SPLITS.values() for piece in split]
    words = [*POSITIVE, *NEGATIVE, *NEUTRAL, *SPURIOUS, *pieces, *PHRASE_WORDS]
    return list(dict.fromkeys(w.lower() for w in words))


def word_piece_vocab() -> list[str]:
    """Special tokens, the review words, then characters and ``##`` continuations (any other word
    still splits into known pieces, never [UNK])."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    continuations = ["##" + c for c in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(specials + review_words() + characters + continuations))


def unlabelled_reviews(n: int, seed: int) -> list[str]:
    """Reviews from the benchmark's words with no label behind them: 0-3 positive and 0-3 negative
    words drawn independently, 8-15 neutral ones, and now and then a spurious token in one of its
    surface forms or some of the spurious phrases' words, shuffled."""
    from benchmarks.xil.data import NEGATIVE, NEUTRAL, POSITIVE, SPURIOUS
    from benchmarks.xil.text_data import PHRASE_WORDS, PHRASES, variant

    rng = np.random.default_rng(seed)
    reviews = []
    for _ in range(n):
        words = (list(rng.choice(POSITIVE, rng.integers(0, 4))) + list(rng.choice(NEGATIVE, rng.integers(0, 4)))
                 + list(rng.choice(NEUTRAL, rng.integers(8, 16))))
        if rng.random() < 0.3:
            words += list(rng.choice(PHRASE_WORDS, rng.integers(1, 5)))
        if rng.random() < 0.15:
            words.append(PHRASES[int(rng.integers(0, len(PHRASES)))])
        if rng.random() < 0.4:
            words.append(variant(rng, int(rng.integers(0, len(SPURIOUS)))) if rng.random() < 0.5
                         else SPURIOUS[int(rng.integers(0, len(SPURIOUS)))])
        rng.shuffle(words)
        reviews.append(" ".join(words) + ".")
    return reviews


def _text_tokenizer(recipe: TextRecipe):
    import transformers

    vocab = word_piece_vocab()
    return transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True,
                                          model_max_length=recipe.window)


class TextPretrainer(nn.Module):
    """The encoder with its two heads: masked words from every position, the bag of words from [CLS]."""

    def __init__(self, encoder: nn.Module, vocab_size: int) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.masked_words = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden),
                                          nn.Linear(hidden, vocab_size))
        self.bag_of_words = nn.Linear(hidden, vocab_size)  # one logit per word piece: is it in the review


def _pretrain_text(recipe: TextRecipe, directory: Path) -> None:
    import transformers

    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    tokenizer = _text_tokenizer(recipe)
    vocab_size = len(tokenizer)
    config = transformers.BertConfig(vocab_size=vocab_size, max_position_embeddings=recipe.window,
                                     **dict(recipe.architecture))
    encoder = transformers.AutoModel.from_config(config)
    model = TextPretrainer(encoder, vocab_size)
    # padded to the longest review, not the window: masked padding changes no state
    encoded = tokenizer(unlabelled_reviews(recipe.corpus_size, recipe.seed), truncation=True,
                        max_length=recipe.window, padding="longest", return_special_tokens_mask=True,
                        return_tensors="pt")
    ids, attention, special = encoded["input_ids"], encoded["attention_mask"], encoded["special_tokens_mask"].bool()
    words = attention.bool() & ~special
    # which word pieces each review holds: what [CLS] predicts
    present = torch.zeros(len(ids), vocab_size).scatter_add_(1, ids, words.float()).clamp_max(1)
    objectives = set(recipe.objective.split("+"))
    mask_id, low = tokenizer.mask_token_id, max(tokenizer.all_special_ids) + 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    scheduler = _schedule(optimizer, recipe.steps, warmup=max(1, recipe.steps // 20))
    model.train()
    for _ in range(recipe.steps):
        rows = torch.randint(0, len(ids), (recipe.batch_size,), generator=generator)
        batch_ids, batch_attention = ids[rows].clone(), attention[rows]
        loss = torch.zeros(())
        if "mlm" in objectives:
            chosen = words[rows] & (torch.rand(batch_ids.shape, generator=generator) < recipe.mask_share)
            targets = torch.where(chosen, batch_ids, torch.full_like(batch_ids, -100))
            draw = torch.rand(batch_ids.shape, generator=generator)  # BERT's 80 / 10 / 10
            random_ids = torch.randint(low, vocab_size, batch_ids.shape, generator=generator)
            batch_ids = torch.where(chosen & (draw < 0.8), torch.full_like(batch_ids, mask_id), batch_ids)
            batch_ids = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, batch_ids)
        hidden = model.encoder(input_ids=batch_ids, attention_mask=batch_attention).last_hidden_state
        if "mlm" in objectives:
            loss = loss + F.cross_entropy(model.masked_words(hidden).flatten(0, 1), targets.flatten(),
                                          ignore_index=-100)
        if "bow" in objectives:  # multi-label: summed over the vocabulary, averaged over the reviews
            loss = loss + recipe.bow_weight * F.binary_cross_entropy_with_logits(
                model.bag_of_words(hidden[:, 0]), present[rows], reduction="sum") / len(rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    encoder.eval()
    encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# --------------------------------------------------------------------------- the probe

def _all_problems() -> dict[str, Any]:
    from benchmarks.xil.data import PROBLEMS
    from benchmarks.xil.text_data import TEXT_PROBLEMS

    return {**PROBLEMS, **TEXT_PROBLEMS}


def decode_data_uri(uri: str):
    """A task's ``data:image/...;base64,`` image as an RGB PIL image."""
    from PIL import Image

    payload = uri.split(",", 1)[1]
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def without_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the character ``spans`` cut out and the spacing mended."""
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + " " + text[end:]
    return re.sub(r"\s+([.,!?])", r"\1", re.sub(r"\s+", " ", text)).strip()


@torch.no_grad()
def backbone_features(directory: Path, tasks: list[dict[str, Any]], batch_size: int = 64) -> np.ndarray:
    """(N, D) features of the tasks as the backend computes them: images decoded to RGB through the
    saved image processor, the ResNet's ``pooler_output`` / the ViT's class token; texts in the
    tokenizer's windows, the [CLS] state averaged over a text's windows."""
    import transformers

    directory = Path(directory)
    model = transformers.AutoModel.from_pretrained(str(directory), local_files_only=True)
    model.eval()
    family = model.config.model_type
    rows: list[torch.Tensor] = []
    if "image" in tasks[0]["data"]:
        processor = transformers.AutoImageProcessor.from_pretrained(str(directory), local_files_only=True)
        for start in range(0, len(tasks), batch_size):
            images = [decode_data_uri(t["data"]["image"]) for t in tasks[start:start + batch_size]]
            out = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
            rows.append(out.last_hidden_state[:, 0] if family == "vit" else out.pooler_output.flatten(1))
        return torch.cat(rows).numpy()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    window = int(min(model.config.max_position_embeddings, tokenizer.model_max_length, 512))
    for task in tasks:
        enc = tokenizer(task["data"]["text"], truncation=True, max_length=window, stride=window // 4,
                        return_overflowing_tokens=True, padding="max_length", return_tensors="pt")
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        rows.append(out.last_hidden_state[:, 0].mean(0))
    return torch.stack(rows).numpy()


def probe(directory: Path, problem: str, seed: int = 0) -> dict[str, Any]:
    """How much a backbone's frozen features say about a problem's clean data: a logistic
    regression (standardised features, C chosen by 5-fold cross-validation) trained on the clean
    training split, its accuracy on the clean test split. Without a clean test split: texts are
    the test reviews with the confounder cut out; images a stratified quarter of the clean training
    split held out."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = _all_problems()[problem](seed)
    train_tasks, y_train = data.clean_train.tasks, np.asarray(data.clean_train.labels)
    if data.clean_test is not None:
        test_tasks, y_test = data.clean_test.tasks, np.asarray(data.clean_test.labels)
    elif data.kind == "text":
        test_tasks = [{"id": t["id"], "data": {"text": without_spans(t["data"]["text"], spans)}}
                      for t, spans in zip(data.test.tasks, data.test.confounders)]
        y_test = np.asarray(data.test.labels)
    else:
        train_at, test_at = train_test_split(np.arange(len(train_tasks)), test_size=0.25, random_state=seed,
                                             stratify=y_train)
        test_tasks, y_test = [train_tasks[i] for i in test_at], y_train[test_at]
        train_tasks, y_train = [train_tasks[i] for i in train_at], y_train[train_at]
    x_train = backbone_features(directory, train_tasks)
    x_test = backbone_features(directory, test_tasks)
    regression = LogisticRegressionCV(Cs=np.logspace(-3, 2, 11), cv=5, l1_ratios=(0.0,), scoring="accuracy",
                                      tol=1e-3, max_iter=3000, use_legacy_attributes=False)
    classifier = make_pipeline(StandardScaler(), regression)
    classifier.fit(x_train, y_train)
    return {"accuracy": float(classifier.score(x_test, y_test)), "n_train": len(train_tasks),
            "n_test": len(test_tasks), "dim": int(x_train.shape[1])}


# --------------------------------------------------------------------------- entry point

def main() -> None:
    import transformers

    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    builds = (("resnet", lambda: image_backbone("resnet"), "decoy_digits"),
              ("vit", lambda: image_backbone("vit"), "decoy_digits"),
              ("bert", text_backbone, "decoy_text"))
    for name, build, problem in builds:
        started = time.perf_counter()
        directory = build()
        elapsed = time.perf_counter() - started
        recorded = build_seconds(directory)
        result = probe(directory, problem)
        origin = f"built in {elapsed:.0f} s" if elapsed > 5 else f"cached (built in {recorded or 0:.0f} s)"
        print(f"{name:7s} {directory.name}: {origin}; probe on {problem}: accuracy {result['accuracy']:.3f} "
              f"({result['n_train']} train / {result['n_test']} test, {result['dim']} features)", flush=True)


if __name__ == "__main__":
    main()
