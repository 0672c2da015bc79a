"""Tiny randomly initialised transformers backbones, saved with save_pretrained into a directory
and loaded back through the backend's real offline path (nothing is downloaded)."""
from __future__ import annotations

import string
from pathlib import Path

import torch

WORDS = ("the a an film movie was is great bad good awful plot actor scene fine story boring loved hated "
         "and it this of to xqz zzv").split()


def save_image_backbone(directory: Path, family: str = "resnet", seed: int = 0) -> Path:
    """A ResNet-, ConvNeXt-, ViT- or DINOv2-family model with its processor (64 or 32 px inputs)."""
    import transformers as T

    torch.manual_seed(seed)
    if family == "resnet":
        config = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        processor = T.ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875)
    elif family == "convnext":
        config = T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
        processor = T.ConvNextImageProcessorPil(size={"shortest_edge": 64})
    elif family == "vit":
        config = T.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32)
        processor = T.ViTImageProcessorPil(size={"height": 32, "width": 32})
    elif family == "dinov2":
        config = T.Dinov2Config(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32)
        processor = T.BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    else:
        raise ValueError(family)
    directory.mkdir(parents=True, exist_ok=True)
    T.AutoModel.from_config(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_text_backbone(directory: Path, family: str = "bert", window: int = 32, seed: int = 0) -> Path:
    """A BERT- or DistilBERT-family encoder with a word-piece tokenizer, ``window`` tokens long."""
    import transformers as T

    torch.manual_seed(seed)
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase) + list(string.digits)
             + list(string.punctuation) + list(WORDS) + ["##" + c for c in string.ascii_lowercase + string.digits])
    tokenizer = T.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=window)
    if family == "bert":
        config = T.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=window)
    elif family == "distilbert":
        config = T.DistilBertConfig(vocab_size=len(vocab), dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                    max_position_embeddings=window)
    else:
        raise ValueError(family)
    directory.mkdir(parents=True, exist_ok=True)
    T.AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
