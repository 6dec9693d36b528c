"""The pinned npm packages behind the emoji dataset: fetch, verify, extract, list.

Every package is fetched once with `npm pack NAME@VERSION` into a cache directory
(default ~/.cache/clip-emoji, or $CLIP_EMOJI_CACHE), checked against the pinned version
and npm's sha512 integrity, and only the members the builder needs are extracted next to
the tarball. Nothing here touches the network except `npm pack`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path


class EmojiDataError(RuntimeError):
    """Any problem building the emoji dataset that the user can act on (message says how)."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's "sha512-<base64>" of the tarball, as `npm pack --json` reports it
    members: tuple[str, ...]  # path prefixes inside the tarball that the builder uses
    license: str  # the SPDX id its package.json declares (verified: a re-licensed release is refused)
    iconify: bool = False  # an @iconify-json set: SVG bodies in icons.json, written out as files on extract

    @property
    def file_stem(self) -> str:
        """The name as npm pack spells files: '@lobehub/fluent-emoji-3d' -> 'lobehub-fluent-emoji-3d'."""
        return self.name.removeprefix("@").replace("/", "-")

    @property
    def tarball_name(self) -> str:
        return f"{self.file_stem}-{self.version}.tgz"


_LICENSE_MEMBERS = ("package/package.json", "package/LICENSE")
_ICONIFY_MEMBERS = ("package/package.json", "package/info.json", "package/icons.json")

EMOJIBASE = Package(
    "emojibase-data",
    "17.0.0",
    "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
    _LICENSE_MEMBERS + ("package/en/data.json", "package/en/messages.json", "package/meta/unicode-names.json"),
    "MIT",
)
GOOGLE = Package(
    "emoji-datasource-google",
    "16.0.0",
    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    _LICENSE_MEMBERS + ("package/img/google/64/",),
    "MIT",
)
TWITTER = Package(
    "emoji-datasource-twitter",
    "16.0.0",
    "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    _LICENSE_MEMBERS + ("package/img/twitter/64/",),
    "MIT",
)
OPENMOJI = Package(
    "openmoji",
    "17.0.0",
    "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
    _LICENSE_MEMBERS + ("package/color/svg/", "package/black/svg/"),
    "CC-BY-SA-4.0",
)
FLUENT = Package(
    "fluentui-emoji",
    "1.3.0",
    "sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw==",
    _LICENSE_MEMBERS + ("package/icons/",),
    "MIT",
)
# The packages' own metadata says MIT/Apache-2.0 for the datasource packages' code; their LICENSE
# files give the art's licenses (Apache-2.0 for Noto, CC-BY 4.0 for Twemoji).
# The packages below ship no license file: the license their package.json (and an iconify set's
# info.json) declares is what copy_licenses writes out, with the author to credit.
FLUENT_3D = Package(
    "@lobehub/fluent-emoji-3d",
    "1.1.0",
    "sha512-Wlq2lVStTnr8BDpIJ0pEnTKO4LuDxxqTEhTvRtD1DLRF0me7ogeRQjKoehDHXuVJ2Qaecgl5wRBv60lUAG3h7g==",
    ("package/package.json", "package/assets/"),
    "MIT",
)
EMOJIONE = Package(  # EmojiOne 2.x (the CC-BY art before JoyPixels), as kept by the EmojiTwo fork
    "@iconify-json/emojione",
    "1.2.3",
    "sha512-T9+T3HIbJNLKKsmxYKlaYhvnHYkz/HNYTV7SHCXVZPfeUi4FqskY70YeN8yYAZT8cCv7w5vJxS4Q1m8zb9CMMg==",
    _ICONIFY_MEMBERS,
    "CC-BY-4.0",
    iconify=True,
)
EMOJIONE_V1 = Package(
    "@iconify-json/emojione-v1",
    "1.2.3",
    "sha512-UjI2VQEXVtGlPBvQuxEizro7QCgBcJDOYwKUupquvvZ8UV4xOlvm45IU82JYWegiAWLerY79gFLMZ26U6Ms+ww==",
    _ICONIFY_MEMBERS,
    "CC-BY-SA-4.0",
    iconify=True,
)
NOTO_V1 = Package(
    "@iconify-json/noto-v1",
    "1.2.5",
    "sha512-/DsVMius69Q0fRS53z7QK1TROSuar606jiIx+laXtdsYGMXpf6LtHBx6CGfoo3UHHb/XpBsw+1L1x3eyPqMuVA==",
    _ICONIFY_MEMBERS,
    "Apache-2.0",
    iconify=True,
)
STREAMLINE = Package(
    "@iconify-json/streamline-emojis",
    "1.2.4",
    "sha512-iNr9T9XuZVTyQPJO8ZlLxBzPkpi7qMl+z1l0C31vpEMqhPMelth3n7CeWQYtixdetDPdI81yeG4ROqjWpYJE6A==",
    _ICONIFY_MEMBERS,
    "CC-BY-4.0",
    iconify=True,
)
PACKAGES = (EMOJIBASE, GOOGLE, TWITTER, OPENMOJI, FLUENT, FLUENT_3D, EMOJIONE, EMOJIONE_V1, NOTO_V1, STREAMLINE)


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLIP_EMOJI_CACHE") or Path.home() / ".cache" / "clip-emoji")


# ----------------------------------------------------------------------------- fetch + verify


def fetch(package: Package, cache_dir: Path) -> Path:
    """Return the verified tarball of `package` in cache_dir, running `npm pack` if absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / package.tarball_name
    if not tarball.exists():
        _npm_pack(package, cache_dir)
    verify(package, tarball)
    return tarball


def _npm_pack(package: Package, cache_dir: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise EmojiDataError(
            f"npm is not on PATH, so {package.name}@{package.version} cannot be fetched. "
            f"Install Node.js/npm, or put {package.tarball_name} into {cache_dir} yourself."
        )
    spec = f"{package.name}@{package.version}"
    result = subprocess.run(
        [npm, "pack", spec, "--pack-destination", str(cache_dir), "--silent"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise EmojiDataError(f"`npm pack {spec}` failed (exit {result.returncode}):\n{result.stderr.strip()}")
    if not (cache_dir / package.tarball_name).exists():
        raise EmojiDataError(f"`npm pack {spec}` did not produce {package.tarball_name} in {cache_dir}")


def verify(package: Package, tarball: Path) -> None:
    """Raise unless the tarball is the pinned package: name and version first, then the hash."""
    with tarfile.open(tarball) as tar:
        try:
            member = tar.extractfile("package/package.json")
        except KeyError:
            member = None
        if member is None:
            raise EmojiDataError(f"{tarball} is not an npm package tarball (no package/package.json)")
        manifest = json.load(member)
    found = (manifest.get("name"), manifest.get("version"))
    if found != (package.name, package.version):
        raise EmojiDataError(
            f"{tarball} holds {found[0]}@{found[1]}, but {package.name}@{package.version} is pinned; "
            f"delete it and run `python -m model.data.emoji fetch` again."
        )
    if manifest.get("license") != package.license:
        raise EmojiDataError(
            f"{tarball} declares license {manifest.get('license')!r}, but {package.license!r} was checked "
            f"when {package.name}@{package.version} was pinned; check the new terms before using it."
        )
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    integrity = "sha512-" + base64.b64encode(digest).decode()
    if integrity != package.integrity:
        raise EmojiDataError(
            f"{tarball} is {package.name}@{package.version} but its sha512 differs from the pinned "
            f"integrity (corrupt or re-published?); delete it and fetch again."
        )


def extract(package: Package, cache_dir: Path) -> Path:
    """Fetch, verify and extract the members the builder needs; return the `package/` root.

    A `.complete` marker naming the members makes re-runs free; a half-done extraction, or one
    made for other members (an older builder), is simply redone. An iconify set's icons are then
    written out as SVG files (see write_iconify_svgs).
    """
    root = cache_dir / f"{package.file_stem}-{package.version}"
    marker = root / ".complete"
    done = "\n".join(package.members)
    if not marker.exists() or marker.read_text() != done:
        tarball = fetch(package, cache_dir)
        with tarfile.open(tarball) as tar:
            wanted = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(package.members)]
            # the "data" filter refuses paths escaping root; Pythons before 3.10.12 do not have it
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=wanted, filter="data")
            else:
                tar.extractall(root, members=wanted)
        if package.iconify:
            write_iconify_svgs(root / "package")
        marker.write_text(done)
    return root / "package"


def fetch_all(cache_dir: Path) -> dict[str, Path]:
    """Fetch + verify + extract every pinned package (what CI calls to warm its cache)."""
    return {package.name: extract(package, cache_dir) for package in PACKAGES}


def license_text(package: Package, root: Path) -> str:
    """The package's license file, or, for packages that ship none, a notice of the license its
    package.json (and an iconify set's info.json) declares, with the author to credit."""
    for candidate in ("LICENSE", "LICENSE.txt"):
        if (root / candidate).exists():
            return (root / candidate).read_text()
    manifest = json.loads((root / "package.json").read_text())
    lines = [
        f"{package.name}@{package.version} ships no license file.",
        f"Its package.json declares: {manifest['license']}",
    ]
    if (root / "info.json").exists():
        info = json.loads((root / "info.json").read_text())
        author, terms = info.get("author", {}), info.get("license", {})
        lines += [
            f"Its info.json: {info.get('name')} by {author.get('name')} ({author.get('url')}),",
            f"licensed {terms.get('title')} ({terms.get('spdx')}): {terms.get('url')}",
        ]
    elif manifest.get("author") or manifest.get("homepage"):
        lines.append(f"Author: {manifest.get('author')}; home: {manifest.get('homepage')}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- style listings

SKIN_TONE_NAMES = {1: "light", 2: "medium-light", 3: "medium", 4: "medium-dark", 5: "dark"}


def strip_fe0f(hexcode: str) -> str:
    """Canonical key of an emoji: uppercase hexcode without the FE0F variation selector.

    Sources disagree on where they keep FE0F (2764 vs 2764-FE0F), so every lookup uses this.
    """
    return "-".join(cp for cp in hexcode.upper().split("-") if cp != "FE0F")


def list_hexcode_files(directory: Path, suffix: str) -> dict[str, Path]:
    """Files named by hexcode (`1f44d-1f3fb.png`, `2764-FE0F.svg`), keyed by strip_fe0f(name)."""
    return {strip_fe0f(path.name[: -len(suffix)]): path for path in directory.glob(f"*{suffix}")}


def fluent_slug(label: str) -> str:
    """The fluentui-emoji file stem for an emojibase label.

    'flag: France' -> 'flag-france', 'piñata' -> 'pinata', 'men’s room' -> 'mens-room'.
    """
    # NFKD splits 'ñ' into 'n' + a combining tilde; the ASCII encode then drops the tilde and '’'
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_label.replace("'", "").lower()).strip("-")


def list_fluent_files(directory: Path) -> dict[str, Path]:
    """Fluent SVGs are named by label, not hexcode; key them by file stem (see fluent_slug)."""
    return {path.stem: path for path in directory.glob("*.svg")}


# ----------------------------------------------------------------------------- iconify sets

ICONIFY_SVG_DIR = "svg"  # next to icons.json: one <name>.svg per icon (aliases are not written)


@dataclass(frozen=True)
class IconifySet:
    """An @iconify-json set: icon names (CLDR-style slugs, no codepoints) and aliases -> parent."""

    icons: dict[str, Path]  # name -> its SVG file under ICONIFY_SVG_DIR
    aliases: dict[str, str]  # alias name -> the icon it draws


def _iconify_svg(icon: dict, defaults: dict) -> str:
    """A standalone SVG document of one icon: IconifyJSON keeps only the body and the box."""
    left, top = icon.get("left", defaults.get("left", 0)), icon.get("top", defaults.get("top", 0))
    width, height = icon.get("width", defaults.get("width", 16)), icon.get("height", defaults.get("height", 16))
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{width}" height="{height}" viewBox="{left} {top} {width} {height}">{icon["body"]}</svg>'
    )


def write_iconify_svgs(root: Path) -> None:
    """Write every icon of root/icons.json as root/svg/<name>.svg, so the builder renders files
    as it does for the other SVG styles."""
    data = json.loads((root / "icons.json").read_text())
    directory = root / ICONIFY_SVG_DIR
    directory.mkdir(exist_ok=True)
    for name, icon in data["icons"].items():
        if set(icon) - {"body", "left", "top", "width", "height"}:
            raise EmojiDataError(f"{root}/icons.json: icon {name!r} has transformations this builder cannot apply")
        (directory / f"{name}.svg").write_text(_iconify_svg(icon, data))


def load_iconify(root: Path) -> IconifySet:
    data = json.loads((root / "icons.json").read_text())
    aliases = {}
    for name, alias in data.get("aliases", {}).items():
        if set(alias) != {"parent"}:
            continue  # a flipped or rotated variant of its parent is not the same drawing
        aliases[name] = alias["parent"]
    return IconifySet({name: root / ICONIFY_SVG_DIR / f"{name}.svg" for name in data["icons"]}, aliases)
