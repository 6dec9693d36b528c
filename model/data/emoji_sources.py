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

    @property
    def tarball_name(self) -> str:
        return f"{self.name}-{self.version}.tgz"


_LICENSE_MEMBERS = ("package/package.json", "package/LICENSE")

EMOJIBASE = Package(
    "emojibase-data",
    "17.0.0",
    "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
    _LICENSE_MEMBERS + ("package/en/data.json", "package/en/messages.json"),
)
GOOGLE = Package(
    "emoji-datasource-google",
    "16.0.0",
    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    _LICENSE_MEMBERS + ("package/img/google/64/",),
)
TWITTER = Package(
    "emoji-datasource-twitter",
    "16.0.0",
    "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    _LICENSE_MEMBERS + ("package/img/twitter/64/",),
)
OPENMOJI = Package(
    "openmoji",
    "17.0.0",
    "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
    _LICENSE_MEMBERS + ("package/color/svg/", "package/black/svg/"),
)
FLUENT = Package(
    "fluentui-emoji",
    "1.3.0",
    "sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw==",
    _LICENSE_MEMBERS + ("package/icons/",),
)
PACKAGES = (EMOJIBASE, GOOGLE, TWITTER, OPENMOJI, FLUENT)


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
    digest = hashlib.sha512(tarball.read_bytes()).digest()
    integrity = "sha512-" + base64.b64encode(digest).decode()
    if integrity != package.integrity:
        raise EmojiDataError(
            f"{tarball} is {package.name}@{package.version} but its sha512 differs from the pinned "
            f"integrity (corrupt or re-published?); delete it and fetch again."
        )


def extract(package: Package, cache_dir: Path) -> Path:
    """Fetch, verify and extract the members the builder needs; return the `package/` root.

    A `.complete` marker makes re-runs free; a half-done extraction is simply redone.
    """
    root = cache_dir / f"{package.name}-{package.version}"
    marker = root / ".complete"
    if not marker.exists():
        tarball = fetch(package, cache_dir)
        with tarfile.open(tarball) as tar:
            wanted = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(package.members)]
            # the "data" filter refuses paths escaping root; Pythons before 3.10.12 do not have it
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=wanted, filter="data")
            else:
                tar.extractall(root, members=wanted)
        marker.touch()
    return root / "package"


def fetch_all(cache_dir: Path) -> dict[str, Path]:
    """Fetch + verify + extract every pinned package (what CI calls to warm its cache)."""
    return {package.name: extract(package, cache_dir) for package in PACKAGES}


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
