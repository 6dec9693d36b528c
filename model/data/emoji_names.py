"""Matching emojibase emoji to the icons of a set named by words, not codepoints (iconify sets).

An iconify set names each icon by a CLDR-style slug of the emoji's name when the set was
converted: today's label for most ('cat-with-tears-of-joy'), the Unicode character name for
older art ('cat-face-with-tears-of-joy'), 'flag-for-<country>' for flags; `chars.json` is empty,
so the name is the only key. Matching runs in passes, most certain first, and never guesses:

1. the slug of the emojibase label is an icon's name;
2. it is an alias's name (the alias draws its parent icon);
3. an older name of the emoji (Variant.older_slugs) is an icon's or an alias's name.

An icon taken in one pass is not available to a later one (the alias 'cricket' -> 'cricket-game'
predates the insect 🦗, whose label is 'cricket'; 'cricket game' 🏏 keeps its icon), and an icon
that two emoji claim in the same pass goes to neither: both are reported as ambiguous.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from model.data.emoji_catalog import Concept, Variant


@dataclass
class NameMatch:
    found: dict[str, str] = field(default_factory=dict)  # variant hexcode -> icon name
    ambiguous: dict[str, list[str]] = field(default_factory=dict)  # icon name -> variants claiming it


def _resolve(name: str, icons: set[str], aliases: dict[str, str]) -> str | None:
    """The icon an alias draws, following alias chains; None if it leads to no icon."""
    seen = set()
    while name in aliases and name not in seen:
        seen.add(name)
        name = aliases[name]
    return name if name in icons else None


def match_names(concepts: list[Concept], icons: set[str], aliases: dict[str, str]) -> NameMatch:
    """Which icon draws each variant (base emoji and skin tones) of the concepts."""

    def by_label(variant: Variant) -> str | None:
        return variant.slug if variant.slug in icons else None

    def by_alias(variant: Variant) -> str | None:
        return _resolve(variant.slug, icons, aliases) if variant.slug in aliases else None

    def by_older_name(variant: Variant) -> str | None:
        return next(
            (icon for name in variant.older_slugs if (icon := _resolve(name, icons, aliases)) is not None), None
        )

    variants = [variant for concept in concepts for variant in concept.variants]
    match, taken = NameMatch(), set()
    for rule in (by_label, by_alias, by_older_name):
        claims = defaultdict(list)
        for variant in variants:
            if variant.hexcode not in match.found and (icon := rule(variant)) is not None and icon not in taken:
                claims[icon].append(variant.hexcode)
        for icon, claimants in claims.items():
            if len(claimants) == 1:
                match.found[claimants[0]] = icon
            else:
                match.ambiguous[icon] = claimants
        taken |= set(claims)
    return match
