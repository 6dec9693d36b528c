"""The emoji dataset builder, run for real on a handful of emoji from the pinned packages."""

import io
import json
import tarfile

import pytest
from PIL import Image

from model.data import emoji_sources
from model.data.emoji import EVERYDAY, STYLES, TEST_STYLE, VALIDATION_STYLE, build, check_paraphrases, main
from model.data.emoji_catalog import held_out_pattern, is_unseen, load_concepts, load_paraphrases
from model.data.emoji_sources import EMOJIBASE, PACKAGES, EmojiDataError, default_cache_dir, fluent_slug, strip_fe0f
from model.data.index import read_index

THUMBS_UP = "1F44D"  # has five skin tones
RED_HEART = "2764"  # its sources name it 2764-FE0F
RAINBOW_FLAG = "1F3F3-FE0F-200D-1F308"  # FE0F inside a ZWJ sequence


@pytest.fixture(scope="session")
def cache_dir():
    """The shared tarball cache, fetched once per session (skips if it cannot be)."""
    cache = default_cache_dir()
    have_all = all((cache / p.tarball_name).exists() for p in PACKAGES)
    if not have_all and emoji_sources.shutil.which("npm") is None:
        pytest.skip(f"npm is not installed and the pinned emoji packages are not cached in {cache}")
    emoji_sources.fetch_all(cache)
    return cache


@pytest.fixture(scope="session")
def some_unseen_concept(cache_dir):
    """The first unseen concept in emojibase order, so the split rules are tested non-vacuously."""
    concepts = load_concepts(emoji_sources.extract(EMOJIBASE, cache_dir))
    return next(c.hexcode for c in concepts if is_unseen(c.hexcode))


@pytest.fixture(scope="session")
def built(cache_dir, some_unseen_concept, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("emoji")
    only = [*EVERYDAY, THUMBS_UP, RED_HEART, RAINBOW_FLAG, some_unseen_concept]
    build(data_dir, cache_dir, only=only, workers=2)
    return data_dir, read_index(data_dir / "index.jsonl")


def test_images_exist_and_decode_as_rgba(built):
    data_dir, records = built
    for record in records:
        with Image.open(data_dir / record["image"]) as image:
            image.load()
            assert image.mode == "RGBA"
            expected = 64 if record["style"] in ("google", "twitter") else 128
            assert image.size == (expected, expected), record["image"]


def test_every_style_is_present(built):
    _, records = built
    assert {r["style"] for r in records} == {s.name for s in STYLES}


def test_captions_lead_with_the_label(built):
    _, records = built
    for record in records:
        assert record["captions"][0] == record["label"]
        assert len(set(record["captions"])) == len(record["captions"]) > 3
    cat = next(r for r in records if r["concept"] == "1F431")
    assert cat["label"] == "cat face"
    assert "an emoji of a cat face" in cat["captions"]
    assert cat["group"] == "animals-nature" and cat["subgroup"] == "animal-mammal"


def test_test_and_validation_styles_never_train(built):
    _, records = built
    for record in records:
        if record["style"] == TEST_STYLE:
            assert record["split"] in ("test", "test_unseen")
        elif record["style"] == VALIDATION_STYLE:
            assert record["split"] in ("val", "val_unseen")
        else:
            assert record["split"] in ("train", "unseen")


def test_unseen_concepts_have_no_training_image(built, some_unseen_concept):
    _, records = built
    unseen = [r for r in records if r["concept"] == some_unseen_concept]
    assert {r["split"] for r in unseen} == {"unseen", "val_unseen", "test_unseen"}
    assert not [r for r in records if is_unseen(r["concept"]) and r["split"] == "train"]


def test_everyday_concepts_are_seen_and_trained_on(built):
    _, records = built
    trained = {r["concept"] for r in records if r["split"] == "train"}
    assert set(EVERYDAY) <= trained
    assert {r["concept"] for r in records if r["split"] == "test"} >= set(EVERYDAY)


def test_skin_tones_are_images_of_their_base_concept(built):
    _, records = built
    thumbs = [r for r in records if r["concept"] == THUMBS_UP]
    variants = {r["variant"] for r in thumbs}
    assert variants == {THUMBS_UP} | {f"{THUMBS_UP}-{tone}" for tone in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")}
    assert not [r for r in records if any(t in r["concept"] for t in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"))]
    light = next(r for r in thumbs if r["variant"] == f"{THUMBS_UP}-1F3FB")
    assert "thumbs up: light skin tone" in light["captions"] and light["label"] == "thumbs up"


def test_fe0f_is_stripped_everywhere(built):
    _, records = built
    assert {RED_HEART, strip_fe0f(RAINBOW_FLAG)} <= {r["concept"] for r in records}
    assert {r["style"] for r in records if r["concept"] == RED_HEART} >= {s.name for s in STYLES if s.core}
    for record in records:
        assert "FE0F" not in record["concept"] + record["variant"] + record["image"].upper()


def test_rebuild_skips_existing_images(built, cache_dir, capsys):
    data_dir, records = built
    again = build(data_dir, cache_dir, only=sorted({r["concept"] for r in records}), workers=2)
    assert again == records
    assert "(0 produced now" in capsys.readouterr().out


def test_licenses_ship_with_the_images(built):
    data_dir, _ = built
    licenses = data_dir / "licenses"
    assert {p.stem for p in licenses.iterdir()} == {p.file_stem for p in PACKAGES}
    # a package without a license file gets the license its metadata declares, and whom to credit
    emojione = (licenses / "iconify-json-emojione.txt").read_text()
    assert "declares: CC-BY-4.0" in emojione and "Emoji One" in emojione
    assert "MIT" in (licenses / "lobehub-fluent-emoji-3d.txt").read_text()


# ----------------------------------------------------------------------------- paraphrases


def test_paraphrases_name_real_concepts(cache_dir):
    paraphrases = load_paraphrases()
    assert len(paraphrases) >= 40
    labels = {c.hexcode: c.label for c in load_concepts(emoji_sources.extract(EMOJIBASE, cache_dir))}
    for hexcode, pair in paraphrases.items():
        assert labels[hexcode] == pair["name"]
    assert set(EVERYDAY) <= set(paraphrases)
    # a synonym inside some label would silently cost that concept its label caption
    held_out = held_out_pattern(paraphrases)
    assert [label for label in labels.values() if held_out.search(label)] == []


def test_no_synonym_in_training_captions(built):
    data_dir, records = built
    assert check_paraphrases(data_dir) == []
    assert main(["check-paraphrases", str(data_dir)]) == 0
    cat_tags = next(r for r in records if r["concept"] == "1F431")["captions"]
    assert not [c for c in cat_tags if "kitty" in c.lower()]  # an emojibase tag of cat face, held out


def test_check_paraphrases_names_offenders(built, tmp_path, capsys):
    data_dir, records = built
    tampered = [dict(r) for r in records]
    victim = next(r for r in tampered if r["split"] == "train")
    victim["captions"] = victim["captions"] + ["a sleepy Kitty"]
    (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tampered))
    offences = check_paraphrases(tmp_path)
    assert len(offences) == 1 and victim["image"] in offences[0] and "Kitty" in offences[0]
    assert main(["check-paraphrases", str(tmp_path)]) == 1
    assert victim["image"] in capsys.readouterr().err


# ----------------------------------------------------------------------------- splits and names


def test_about_a_tenth_of_all_concepts_are_unseen(cache_dir):
    concepts = load_concepts(emoji_sources.extract(EMOJIBASE, cache_dir))
    fraction = sum(is_unseen(c.hexcode) for c in concepts) / len(concepts)
    assert 0.08 < fraction < 0.12
    assert not any(is_unseen(h) for h in EVERYDAY)


def test_fluent_slug_matches_fluent_file_names():
    assert fluent_slug("flag: France") == "flag-france"
    assert fluent_slug("piñata") == "pinata"
    assert fluent_slug("men’s room") == "mens-room"


def test_strip_fe0f():
    assert strip_fe0f("2764-fe0f") == "2764"
    assert strip_fe0f("1F3F3-FE0F-200D-1F308") == "1F3F3-200D-1F308"


# ----------------------------------------------------------------------------- errors


def _fake_tarball(path, name, version, license="MIT"):
    manifest = json.dumps({"name": name, "version": version, "license": license}).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("package/package.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))


def test_a_cached_tarball_of_another_version_is_refused(tmp_path):
    _fake_tarball(tmp_path / EMOJIBASE.tarball_name, EMOJIBASE.name, "16.0.0")
    with pytest.raises(EmojiDataError, match=r"holds emojibase-data@16\.0\.0.*17\.0\.0 is pinned"):
        emoji_sources.fetch(EMOJIBASE, tmp_path)


def test_a_tarball_declaring_another_license_is_refused(tmp_path):
    _fake_tarball(tmp_path / EMOJIBASE.tarball_name, EMOJIBASE.name, EMOJIBASE.version, license="UNLICENSED")
    with pytest.raises(EmojiDataError, match="declares license 'UNLICENSED'"):
        emoji_sources.fetch(EMOJIBASE, tmp_path)


def test_a_scoped_package_is_cached_under_the_file_name_npm_pack_gives_it():
    assert emoji_sources.FLUENT_3D.tarball_name == "lobehub-fluent-emoji-3d-1.1.0.tgz"


def test_a_tampered_tarball_of_the_right_version_is_refused(tmp_path):
    _fake_tarball(tmp_path / EMOJIBASE.tarball_name, EMOJIBASE.name, EMOJIBASE.version)
    with pytest.raises(EmojiDataError, match="sha512"):
        emoji_sources.fetch(EMOJIBASE, tmp_path)


def test_missing_npm_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji_sources.shutil, "which", lambda name: None)
    with pytest.raises(EmojiDataError, match="npm is not on PATH"):
        emoji_sources.fetch(EMOJIBASE, tmp_path)


# ----------------------------------------------------------------------------- the index format


def test_read_index_accepts_a_single_caption_and_refuses_records_without_one(tmp_path):
    index = tmp_path / "index.jsonl"
    index.write_text('{"image": "a.png", "caption": "a cat"}\n\n{"image": "b.png", "captions": ["x", "y"]}\n')
    assert read_index(index) == [{"image": "a.png", "captions": ["a cat"]}, {"image": "b.png", "captions": ["x", "y"]}]
    index.write_text('{"image": "a.png", "captions": []}\n')
    with pytest.raises(ValueError, match="index.jsonl:1"):
        read_index(index)
