import pytest
import torch
import torch.nn.functional as F

import model


def test_label_embeddings_average_templates_then_renormalise(tiny_checkpoint):
    clip, tokenizer = model.load_pretrained(tiny_checkpoint), model.load_tokenizer(tiny_checkpoint)
    labels, templates = ["cat", "hot dog", "rocket"], ["a photo of a {}.", "a {} drawing", "{}"]
    classes = model.zero_shot.label_embeddings(clip, tokenizer, labels, templates)
    with torch.no_grad():
        for row, label in enumerate(labels):
            ids, mask = tokenizer([template.format(label) for template in templates])
            expected = F.normalize(clip.encode_text(ids, mask).mean(dim=0), dim=-1)
            assert torch.allclose(classes[row], expected, atol=1e-5)
    assert torch.allclose(classes.norm(dim=-1), torch.ones(3))


def test_label_embedding_does_not_depend_on_other_labels(tiny_checkpoint):
    clip, tokenizer = model.load_pretrained(tiny_checkpoint), model.load_tokenizer(tiny_checkpoint)
    alone = model.zero_shot.label_embeddings(clip, tokenizer, ["cat"])
    among = model.zero_shot.label_embeddings(clip, tokenizer, ["a very long label about many things", "cat"])
    assert torch.allclose(alone[0], among[1], atol=1e-6)


def test_templates_must_hold_a_slot(tiny_checkpoint):
    clip, tokenizer = model.load_pretrained(tiny_checkpoint), model.load_tokenizer(tiny_checkpoint)
    with pytest.raises(model.ModelError, match="has no"):
        model.zero_shot.label_embeddings(clip, tokenizer, ["cat"], ["a photo"])
