"""The checkpoint directory: ``config.json`` + ``model.safetensors`` + ``vocab.txt``.

All checks of a checkpoint live here, so a broken one fails with one clear CheckpointError
(or TokenizerError for the vocabulary) instead of deep inside torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .clip import CLIP
from .config import CLIPConfig
from .errors import CheckpointError, ConfigError
from .tokenizer import VOCAB_FILE, Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE)


def save_pretrained(clip: CLIP, tokenizer: Tokenizer, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the checkpoint directory. ``dtype`` (e.g. torch.float16) casts floating weights on save."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    clip.config.save(directory / CONFIG_FILE)
    tensors = {}
    for name, tensor in clip.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save(directory)
    return directory


def check_checkpoint_files(path: str | Path) -> Path:
    """Cheap checks a server runs before it binds: the directory and its three files exist and
    the config parses. Returns the directory."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {directory} lacks {', '.join(missing)} "
            f"(a checkpoint directory holds {', '.join(CHECKPOINT_FILES)})"
        )
    load_config(directory)
    return directory


def load_config(path: str | Path) -> CLIPConfig:
    try:
        return CLIPConfig.load(Path(path) / CONFIG_FILE)
    except ConfigError as error:
        raise CheckpointError(f"bad {CONFIG_FILE} in {path}: {error}") from error


def load_tokenizer(path: str | Path) -> Tokenizer:
    directory = Path(path)
    config = load_config(directory)
    return Tokenizer(directory / VOCAB_FILE, config.text.context_length, config.text.vocab_size)


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> CLIP:
    """Build the model from a checkpoint directory, on ``device`` in ``dtype`` (default float32), eval mode."""
    directory = check_checkpoint_files(path)
    config = load_config(directory)
    Tokenizer(directory / VOCAB_FILE, config.text.context_length, config.text.vocab_size)  # vocabulary fits
    weights = read_weights(directory / WEIGHTS_FILE)
    with torch.device("meta"):  # no time spent on random init that the weights replace anyway
        clip = CLIP(config)
    check_state_dict(clip, weights, source=str(directory / WEIGHTS_FILE))
    clip.load_state_dict(weights, strict=True, assign=True)
    return clip.to(device=device, dtype=dtype or torch.float32).eval()


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read weights {path}: {error}") from error


def check_state_dict(clip: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Missing keys, unexpected keys and shape mismatches, each named (a few of each)."""
    expected = clip.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(
        f"{name} {tuple(weights[name].shape)} vs {tuple(expected[name].shape)}"
        for name in set(expected) & set(weights)
        if tuple(weights[name].shape) != tuple(expected[name].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (file vs config): {_few(mismatched)}")
    if problems:
        raise CheckpointError(f"weights {source} do not fit the config: " + "; ".join(problems))


SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
MAX_HEADER_BYTES = 100 * 2**20


def check_weights_header(path: str | Path) -> None:
    """Reads only the safetensors header of a checkpoint's weights (not the tensors) and checks it
    against the config: every tensor named and shaped as the model expects, a known dtype, and its
    bytes inside the file. A zero-byte, truncated or mis-shaped file fails here, before a server
    binds, instead of in the background load after it reported healthy."""
    directory = Path(path)
    file = directory / WEIGHTS_FILE
    size = file.stat().st_size
    with open(file, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else None
        if length is None or length > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(
                f"weights {file} ({size} bytes) are not a safetensors file: no complete header (empty or cut short?)"
            )
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise CheckpointError(f"weights {file}: the safetensors header does not parse: {error}") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"weights {file}: the safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    shapes = {
        name: _checked_entry(file, name, entry, data_bytes) for name, entry in header.items() if name != "__metadata__"
    }
    with torch.device("meta"):
        clip = CLIP(load_config(directory))
    check_state_dict(clip, shapes, source=str(file))


def _checked_entry(file: Path, name: str, entry, data_bytes: int) -> torch.Tensor:
    """A header entry as an empty meta tensor of its shape, once its dtype and byte range hold."""
    try:
        itemsize = SAFETENSORS_DTYPES.get(entry["dtype"])
        begin, end = (int(offset) for offset in entry["data_offsets"])
        shape = [int(side) for side in entry["shape"]]
    except (TypeError, KeyError, ValueError) as error:
        raise CheckpointError(f"weights {file}: {name}'s header entry is malformed: {entry!r:.200}") from error
    if itemsize is None:
        raise CheckpointError(f"weights {file}: {name} has dtype {entry['dtype']!r}, not a float or int type")
    if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * itemsize:
        raise CheckpointError(
            f"weights {file}: {name}'s bytes ({begin}..{end}) do not fit its shape {shape} "
            f"or the file's {data_bytes} data bytes (truncated?)"
        )
    return torch.empty(shape, device="meta")


def weights_sha256(path: str | Path) -> str:
    """sha256 of the checkpoint's weights file (hex), to name exactly which weights serve."""
    file = Path(path)
    if file.is_dir():
        file = file / WEIGHTS_FILE
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _few(names: list[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... (+{len(names) - count} more)" if len(names) > count else "")
