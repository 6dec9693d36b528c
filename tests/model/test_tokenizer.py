import pytest
import torch

import model


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
    return model.Tokenizer(vocab_path, context_length=8, vocab_size=30522)


def test_bert_uncased_wordpiece_with_cls_sep(tokenizer):
    assert tokenizer.tokenize("A Photo of a CAT") == ["[CLS]", "a", "photo", "of", "a", "cat", "[SEP]"]
    assert tokenizer.tokenize("café") == tokenizer.tokenize("CAFE")  # uncased and accent-stripped
    ids, mask = tokenizer(["a cat"])
    assert ids[0, 0].item() == 101 and ids[0, -1].item() == 102  # [CLS], [SEP] of bert-base-uncased


def test_padding_to_longest_with_pad_zero(tokenizer):
    ids, mask = tokenizer(["a cat", "a photo of a dog"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (2, 7)
    assert mask[0].tolist() == [True] * 4 + [False] * 3
    assert ids[0, 4:].tolist() == [0, 0, 0]


def test_long_labels_are_truncated_not_refused(tokenizer):
    ids, mask = tokenizer(["word " * 100, "x"])
    assert ids.shape == (2, 8)
    assert ids[0, -1].item() == 102  # still closed by [SEP]


def test_refuses_vocabulary_of_wrong_size(vocab_path):
    with pytest.raises(model.TokenizerError, match="has 30522 tokens but the model expects 1000"):
        model.Tokenizer(vocab_path, context_length=8, vocab_size=1000)


def test_refuses_vocabulary_without_special_tokens_or_missing(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "hello", "world"]) + "\n")
    with pytest.raises(model.TokenizerError, match=r"lacks the special token\(s\) \[UNK\], \[CLS\], \[SEP\]"):
        model.Tokenizer(tmp_path / "vocab.txt", context_length=8)
    with pytest.raises(model.TokenizerError, match="not found"):
        model.Tokenizer(tmp_path / "missing.txt", context_length=8)
