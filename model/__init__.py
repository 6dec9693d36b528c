"""CLIP model library: architecture, tokenizer, preprocessing, checkpoints, zero-shot helpers.

    import model
    clip = model.load_pretrained(path)
    tok = model.load_tokenizer(path)
    pixels = model.preprocess_images([image], clip.config)
    classes = model.zero_shot.label_embeddings(clip, tok, ["cat", "dog"], ["a photo of a {}."])
    probabilities = clip.similarity_logits(clip.encode_image(pixels), classes).softmax(dim=-1)

Names are imported on first use, so ``python -m model.training --bundle`` runs on a host with only
torch and numpy (no Pillow, tokenizers or safetensors needed until something asks for them).
"""

import importlib

_SOURCES = {
    "zero_shot": None,
    "CLIP": "clip",
    "CLIPConfig": "config",
    "TextConfig": "config",
    "VisionConfig": "config",
    "Tokenizer": "tokenizer",
    **dict.fromkeys(
        [
            "load_pretrained",
            "load_tokenizer",
            "load_config",
            "save_pretrained",
            "check_checkpoint_files",
            "check_weights_header",
            "weights_sha256",
        ],
        "checkpoint",
    ),
    **dict.fromkeys(["preprocess_images", "normalize_pixels", "load_image", "open_images", "to_rgb"], "preprocess"),
    **dict.fromkeys(
        ["ModelError", "ConfigError", "CheckpointError", "TokenizerError", "ImageError", "ImageTooLargeError"], "errors"
    ),
}
__all__ = list(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    module = importlib.import_module(f".{_SOURCES[name] or name}", __name__)
    value = module if _SOURCES[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
