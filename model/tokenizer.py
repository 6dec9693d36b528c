"""BERT-style uncased WordPiece tokenizer over the ``tokenizers`` library.

``[CLS] tokens [SEP]``, ``[PAD]`` = 0, lower-cased and accent-stripped like bert-base-uncased.
Texts longer than ``context_length`` are truncated (never an error); a batch is padded to its
longest member. Returns ``(ids, mask)``: LongTensor (N, L) and BoolTensor (N, L).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.models import WordPiece

from .errors import TokenizerError

VOCAB_FILE = "vocab.txt"
REQUIRED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


class Tokenizer:
    def __init__(self, vocab_path: str | Path, context_length: int, vocab_size: int | None = None):
        self.vocab_path = Path(vocab_path)
        if not self.vocab_path.is_file():
            raise TokenizerError(f"vocabulary file not found: {self.vocab_path}")
        vocab = self._read_vocabulary()
        self._check_vocabulary(vocab, vocab_size)
        self.vocab_size = len(vocab)
        self.context_length = context_length
        wordpiece = BertWordPieceTokenizer(vocab, lowercase=True)
        self._tokenizer: _RustTokenizer = wordpiece._tokenizer
        self._tokenizer.enable_truncation(max_length=context_length)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def _read_vocabulary(self) -> dict[str, int]:
        try:
            return WordPiece.read_file(str(self.vocab_path))
        except Exception as error:  # the Rust side raises plain Exceptions for unreadable files
            raise TokenizerError(f"cannot read vocabulary {self.vocab_path}: {error}") from error

    def _check_vocabulary(self, vocab: dict[str, int], expected_size: int | None) -> None:
        if expected_size is not None and len(vocab) != expected_size:
            raise TokenizerError(
                f"vocabulary {self.vocab_path} has {len(vocab)} tokens but the model expects {expected_size} "
                f"(text.vocab_size): use the vocabulary the checkpoint was trained with"
            )
        missing = [token for token in REQUIRED_TOKENS if token not in vocab]
        if missing:
            raise TokenizerError(f"vocabulary {self.vocab_path} lacks the special token(s) {', '.join(missing)}")
        if vocab["[PAD]"] != 0:
            raise TokenizerError(f"vocabulary {self.vocab_path} must have [PAD] at id 0, found it at {vocab['[PAD]']}")

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise TokenizerError("no texts to tokenize")
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.long)
        mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.bool)
        return ids, mask

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, special tokens included (for debugging and docs)."""
        return self._tokenizer.encode(text).tokens

    def word_pieces(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, without the special tokens around it."""
        return [token for token in self.tokenize(text) if token not in ("[CLS]", "[SEP]")]

    def save(self, directory: str | Path) -> None:
        target = Path(directory) / VOCAB_FILE
        if target.resolve() != self.vocab_path.resolve():
            shutil.copyfile(self.vocab_path, target)
