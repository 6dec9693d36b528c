"""The styles added after the first build: their parsing on real icons of the pinned packages, the
name matching of the iconify sets, the leak check on real emoji, and the concept set they leave as
it was."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from PIL import Image

from model.data.emoji import (
    STYLES,
    Job,
    build_report,
    iconify_match,
    leak_check,
    plan,
    run_job,
    run_jobs,
    select_concepts,
    style_sources,
)
from model.data.emoji_catalog import VALIDATION_STYLE, is_unseen, load_concepts, split_of
from model.data.emoji_leaks import image_distance, leak_features
from model.data.emoji_sources import EMOJIBASE, EMOJIONE, ICONIFY_SVG_DIR, NOTO_V1, extract, write_iconify_svgs

STYLE = {style.name: style for style in STYLES}
CAT = "1F431"
FRANCE = "1F1EB-1F1F7"
# the concept set of the first build (main, 1,906 concepts, 200 of them unseen): sha256 of the
# sorted hexcodes joined by commas
CONCEPTS = (1906, "89d377e61a7a898d1fe6a98629e9cbebc8549d0c81ed98b38f58a41234006033")
UNSEEN = (200, "53b7cb1b3aeef90cb1ea0727162ffc6b7df95b5b060989d90bceba86d2e7d3bf")


@pytest.fixture(scope="module")
def catalog(emoji_cache):
    """Every emojibase concept, the package roots, and which variants each style draws."""
    roots = {p.name: extract(p, emoji_cache) for p in {s.package for s in STYLES} | {EMOJIBASE}}
    concepts = load_concepts(roots[EMOJIBASE.name])
    sources = {s.name: style_sources(s, roots[s.package.name], concepts) for s in STYLES}
    return concepts, roots, sources


def _fingerprint(hexcodes) -> tuple[int, str]:
    ordered = sorted(hexcodes)
    return len(ordered), hashlib.sha256(",".join(ordered).encode()).hexdigest()


# ----------------------------------------------------------------------------- concepts and splits


def test_new_styles_leave_the_concept_set_and_its_unseen_concepts_as_they_were(catalog):
    concepts, _, sources = catalog
    selected = [c.hexcode for c in select_concepts(concepts, sources, None)]
    assert _fingerprint(selected) == CONCEPTS
    assert _fingerprint(h for h in selected if is_unseen(h)) == UNSEEN


def test_an_emoji_that_only_new_styles_bring_to_three_is_reported_not_added(catalog):
    concepts, roots, sources = catalog
    # no emoji is such today (the 8 left out are Unicode 17 ones only OpenMoji draws), so take
    # the cat out of every core style but two: the new styles still draw it
    two_core = {"google", "twitter"}
    fewer = {
        name: {h: path for h, path in drawn.items() if h != CAT or STYLE[name].core is False or name in two_core}
        for name, drawn in sources.items()
    }
    selected = select_concepts(concepts, fewer, None)
    assert CAT not in {c.hexcode for c in selected} and len(selected) == CONCEPTS[0] - 1
    report = build_report(concepts, selected, fewer, roots, [], [], full=True)
    assert report["newly_eligible"] == [[CAT, "cat face"]]


def test_the_validation_style_draws_nearly_every_concept_and_openmoji_black_now_trains(catalog):
    concepts, _, sources = catalog
    selected = select_concepts(concepts, sources, None)
    drawn = sum(c.hexcode in sources[VALIDATION_STYLE] for c in selected)
    assert drawn / len(selected) > 0.95
    assert split_of("openmoji-black", CAT) == "train" and split_of(VALIDATION_STYLE, CAT) == "val"


# ----------------------------------------------------------------------------- parsing real icons


def test_fluent_3d_webps_are_found_by_codepoint_and_converted_to_128_px_pngs(catalog, tmp_path):
    _, _, sources = catalog
    fluent_3d = sources["fluent-3d"]
    assert fluent_3d[CAT].name == "1f431.webp"
    assert fluent_3d["1F9D7-1F3FD"].name == "1f9d7-1f3fd.webp"  # a skin tone of 'person climbing'
    assert fluent_3d["2764"].name == "2764-fe0f.webp"  # FE0F in the file name, not in the key
    target = tmp_path / "cat.png"
    run_job(Job(fluent_3d[CAT], target, STYLE["fluent-3d"].kind))
    with Image.open(target) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (128, 128))
        assert image.getpixel((0, 0))[3] == 0 and image.getpixel((64, 64))[3] == 255


def test_iconify_names_match_by_label_skin_tone_alias_unicode_name_and_flag(catalog):
    concepts, roots, _ = catalog
    found = iconify_match(roots[EMOJIONE.name], concepts).found
    assert found[CAT] == "cat-face"  # the label's slug
    assert found["1F476-1F3FF"] == "baby-dark-skin-tone"  # 'baby: dark skin tone'
    assert found["1F981"] == "lion-face"  # 'lion': an alias of the icon
    assert found["1F639"] == "cat-face-with-tears-of-joy"  # 'cat with tears of joy': its Unicode name
    assert found["1F470-1F3FF"] == "bride-with-veil-dark-skin-tone"  # 'person with veil: dark skin tone'
    assert found["1F1E6-1F1EB"] == "flag-for-afghanistan"  # 'flag: Afghanistan'


def test_an_icon_goes_to_its_exact_name_and_a_name_two_emoji_share_goes_to_neither(catalog):
    concepts, roots, _ = catalog
    emojione = iconify_match(roots[EMOJIONE.name], concepts)
    # the alias 'cricket' -> 'cricket-game' predates the insect whose label is now 'cricket'
    assert emojione.found["1F3CF"] == "cricket-game" and "1F997" not in emojione.found
    noto_v1 = iconify_match(roots[NOTO_V1.name], concepts)
    # 'keycap: #' and 'keycap: *' both slug to 'keycap'
    assert noto_v1.ambiguous["keycap"] == ["0023-20E3", "002A-20E3"]
    assert not {"0023-20E3", "002A-20E3"} & set(noto_v1.found)


def test_an_iconify_icon_renders_whole_from_its_body_and_box(catalog, tmp_path):
    _, roots, _ = catalog
    shutil.copy(roots[EMOJIONE.name] / "icons.json", tmp_path / "icons.json")
    write_iconify_svgs(tmp_path)
    target = tmp_path / "cat.png"
    run_job(Job(tmp_path / ICONIFY_SVG_DIR / "cat-face.svg", target, STYLE["emojione"].kind))
    with Image.open(target) as image:
        assert (image.mode, image.size) == ("RGBA", (128, 128))
        left, top, right, bottom = image.getchannel("A").getbbox()
    assert right - left > 100 and bottom - top > 90  # the drawing fills the box, not a corner of it


# ----------------------------------------------------------------------------- the leak check


@pytest.fixture(scope="module")
def leak_set(catalog, tmp_path_factory):
    """A cat and a flag in every style that draws them, as the builder plans and makes them, before
    its leak check."""
    concepts, _, sources = catalog
    data_dir = tmp_path_factory.mktemp("leaks")
    jobs, records = plan(select_concepts(concepts, sources, [CAT, FRANCE]), sources, data_dir)
    run_jobs(jobs, workers=2)
    return data_dir, records


def _record(records, style, hexcode):
    return next(r for r in records if r["style"] == style and r["variant"] == hexcode)


def test_a_twemoji_png_passed_off_as_a_new_style_image_is_dropped(leak_set):
    data_dir, records = leak_set
    for hexcode in (CAT, FRANCE):
        fake = dict(_record(records, "emojione", hexcode), image=f"images/fake/{hexcode}.png")
        (data_dir / "images" / "fake").mkdir(exist_ok=True)
        shutil.copy(data_dir / _record(records, "twitter", hexcode)["image"], data_dir / fake["image"])
        kept, dropped = leak_check([*records, fake], data_dir)
        assert [d["image"] for d in dropped] == [fake["image"]]
        assert kept == records


def test_real_new_style_drawings_are_kept_even_where_they_look_like_twemoji(leak_set):
    data_dir, records = leak_set
    new = [r for r in records if not STYLE[r["style"]].core]
    assert {r["style"] for r in new if r["concept"] == FRANCE} >= {"fluent-3d", "emojione", "emojione-v1"}
    kept, dropped = leak_check(records, data_dir)
    assert dropped == [] and kept == records
    # a flag is a flag in every set: an honest one sits nearer Twemoji than Noto's waving flag does
    france = leak_features(data_dir / _record(records, "fluent-3d", FRANCE)["image"])
    twemoji = leak_features(data_dir / _record(records, "twitter", FRANCE)["image"])
    noto = leak_features(data_dir / _record(records, "google", FRANCE)["image"])
    assert image_distance(france, twemoji) < image_distance(noto, twemoji)
