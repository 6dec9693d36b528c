"""CLIP model library: architecture, tokenizer, preprocessing, checkpoints, zero-shot helpers.

    import model
    clip = model.load_pretrained(path)
    tok = model.load_tokenizer(path)
    pixels = model.preprocess_images([image], clip.config)
    classes = model.zero_shot.label_embeddings(clip, tok, ["cat", "dog"], ["a photo of a {}."])
    probabilities = clip.similarity_logits(clip.encode_image(pixels), classes).softmax(dim=-1)
"""
from . import zero_shot
from .checkpoint import check_checkpoint_files, load_config, load_pretrained, load_tokenizer, save_pretrained, weights_sha256
from .clip import CLIP
from .config import CLIPConfig, TextConfig, VisionConfig
from .errors import CheckpointError, ConfigError, ImageError, ImageTooLargeError, ModelError, TokenizerError
from .preprocess import load_image, normalize_pixels, open_images, preprocess_images, to_rgb
from .tokenizer import Tokenizer

__all__ = [
    "CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "Tokenizer",
    "load_pretrained", "load_tokenizer", "load_config", "save_pretrained", "check_checkpoint_files", "weights_sha256",
    "preprocess_images", "normalize_pixels", "load_image", "open_images", "to_rgb", "zero_shot",
    "ModelError", "ConfigError", "CheckpointError", "TokenizerError", "ImageError", "ImageTooLargeError",
]
