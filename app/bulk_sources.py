"""What a bulk run classifies: files, directories (recursive), globs and .tar archives, listed in a
stable order, each image named as the output will name it; and reading one image's bytes, bounded.

A directory contributes the files with an image suffix (IMAGE_SUFFIXES) found under it, following
symbolic links but never into a directory it has already walked (a symlink loop is walked once).
An archive contributes its regular members with an image suffix, named ``archive.tar/member``; its
members are read by offset, so several threads (or Ray workers) can read one archive at once.
A file named on the command line or matched by a glob is always tried, whatever its suffix.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .exceptions import ImageTooLarge, InvalidInput, ServiceError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
ARCHIVE_SUFFIX = ".tar"
COMPRESSED_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")


@dataclass(frozen=True)
class Source:
    """One image to classify. ``offset`` and ``size`` locate an archive member inside ``path``;
    ``error`` is a failure known before reading (an archive that cannot be listed)."""

    name: str
    path: str
    offset: int | None = None
    size: int | None = None
    error: str | None = None


class UnreadableFile(ServiceError):
    code = "unreadable_file"


def find_sources(inputs: Sequence[str]) -> list[Source]:
    """Every image the inputs name, in order, each once. InvalidInput for an input that names nothing."""
    walked: set[tuple[int, int]] = set()  # (device, inode) of the directories walked so far
    named: dict[str, Source] = {}
    for argument in inputs:
        for source in _expand(argument, walked):
            named.setdefault(source.name, source)
    return list(named.values())


def read_source(source: Source, max_bytes: int) -> bytes:
    """The image's bytes; ImageTooLarge past ``max_bytes``, UnreadableFile when it cannot be read."""
    if source.error is not None:
        raise UnreadableFile(source.error)
    try:
        with open(source.path, "rb") as file:
            if source.offset is None:
                data = file.read(max_bytes + 1)
            else:
                _check_size(source, source.size or 0, max_bytes)
                file.seek(source.offset)
                data = file.read(source.size)
                if len(data) < (source.size or 0):
                    raise UnreadableFile(f"{source.name!r} is cut short: the archive ends inside it (truncated?)")
    except OSError as error:
        raise UnreadableFile(f"{source.name!r} cannot be read: {error.strerror or error}") from error
    _check_size(source, len(data), max_bytes)
    return data


def _check_size(source: Source, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLarge(
            f"{source.name!r} is larger than the limit of {max_bytes} bytes a file (CLIP_MAX_UPLOAD_BYTES)"
        )


def _expand(argument: str, walked: set[tuple[int, int]]) -> Iterator[Source]:
    if os.path.isdir(argument):
        yield from _walk(argument, walked)
    elif os.path.isfile(argument):
        yield from _file_or_archive(argument)
    elif glob.has_magic(argument):
        matches = _glob(argument)
        if not matches:
            raise InvalidInput(f"the pattern {argument!r} matches no file", "no_images")
        for match in matches:
            yield from _walk(match, walked) if os.path.isdir(match) else _file_or_archive(match)
    else:
        raise InvalidInput(f"no such file or directory: {argument}", "no_images")


def _glob(pattern: str) -> list[str]:
    """pathlib's glob: ``**`` is any depth but never descends a symbolic link (so no loop), a
    matched directory is then walked like one named on the command line."""
    parts = Path(pattern).parts
    fixed = next(position for position, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    return sorted(str(match) for match in base.glob(str(Path(*parts[fixed:]))))


def _file_or_archive(path: str) -> Iterator[Source]:
    lowered = path.lower()
    if lowered.endswith(COMPRESSED_ARCHIVE_SUFFIXES):
        raise InvalidInput(
            f"{path} is a compressed archive: members cannot be read by offset; unpack it to a .tar first "
            f"(e.g. gunzip)",
            "compressed_archive",
        )
    if lowered.endswith(ARCHIVE_SUFFIX):
        yield from archive_members(path)
    else:
        yield Source(path, path)


def _walk(root: str, walked: set[tuple[int, int]]) -> Iterator[Source]:
    problems: list[Source] = []

    def report(error: OSError) -> None:
        problems.append(Source(error.filename, error.filename, error=f"cannot list {error.filename}: {error.strerror}"))

    for directory, subdirectories, files in os.walk(root, onerror=report, followlinks=True):
        identity = _identity(directory)
        if identity in walked:  # a symlink back up the tree, or a directory reached twice
            subdirectories.clear()
            continue
        walked.add(identity)
        subdirectories.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                path = os.path.join(directory, name)
                yield Source(path, path)
    yield from problems


def _identity(directory: str) -> tuple[int, int]:
    status = os.stat(directory)
    return status.st_dev, status.st_ino


def archive_members(path: str) -> Iterator[Source]:
    """The regular image members of an uncompressed tar; an archive that cannot be (fully) listed
    ends with one failed Source naming it."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                # keep no index: a million members would cost a million TarInfo (typeshed omits the attribute)
                archive.members = []  # type: ignore[attr-defined]
                if member.isreg() and not member.issparse() and _has_image_suffix(member.name):
                    yield Source(f"{path}/{member.name}", path, member.offset_data, member.size)
    except (tarfile.TarError, OSError) as error:
        yield Source(path, path, error=f"{path} is not a readable tar archive: {error}")


def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
