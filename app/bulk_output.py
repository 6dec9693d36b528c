"""A bulk run's output, written as it goes and read back by ``--resume``: the results (JSON lines or
CSV, one line per image) and the optional embeddings (.npy, row i = result line i).

A result line is complete once its newline is written; a run killed mid-write leaves at most one
incomplete (or garbled) last line, which resuming drops. Embedding rows are written before their
result lines, so the .npy never holds fewer rows than the results file: resuming cuts it back to
exactly one row per complete line.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from .exceptions import InvalidInput

Record = dict  # one output line: {"path", "top_k": [{"label", "probability", "logit"}], "error", "message"}
EMBEDDING_DTYPE = np.dtype("<f4")
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def record_of_success(name: str, top_k: Sequence[dict]) -> Record:
    return {"path": name, "top_k": list(top_k), "error": None}


def record_of_failure(name: str, code: str, message: str) -> Record:
    return {"path": name, "top_k": [], "error": code, "message": message}


class JsonLines:
    """One JSON object a line: the record as it is."""

    def __init__(self, top_k: int):
        self.top_k = top_k

    def header(self) -> str:
        return ""

    def encode(self, record: Record) -> str:
        return json.dumps(record, ensure_ascii=False) + "\n"

    def read(self, lines: Iterator[str]) -> Iterator[tuple[str, bool]]:
        """(path, failed) of each line."""
        for line in lines:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                raise ValueError("no 'path' in it")
            yield record["path"], record.get("error") is not None


class CsvRows:
    """A header, then path, error, message and label/probability/logit for each of the top k."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        ranks = range(1, top_k + 1)
        self.columns = ["path", "error", "message"] + [
            f"{f}_{r}" for r in ranks for f in ("label", "probability", "logit")
        ]

    def _line(self, values: Sequence) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()

    def header(self) -> str:
        return self._line(self.columns)

    def encode(self, record: Record) -> str:
        scores = [
            value for score in record["top_k"] for value in (score["label"], score["probability"], score["logit"])
        ]
        padding = [""] * (len(self.columns) - 3 - len(scores))
        return self._line([record["path"], record["error"] or "", record.get("message", ""), *scores, *padding])

    def read(self, lines: Iterator[str]) -> Iterator[tuple[str, bool]]:
        rows = csv.reader(lines, strict=True)
        if next(rows, None) != self.columns:
            raise ValueError(
                f"its header is not {','.join(self.columns)} (written with another --top-k or label count?)"
            )
        for row in rows:
            if len(row) != len(self.columns):
                raise ValueError(f"a row of {len(row)} fields, not {len(self.columns)}")
            yield row[0], row[1] != ""


def refuse_to_overwrite(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and path.exists():
            raise InvalidInput(f"{path} exists: pass --resume to continue it, or remove it", "output_exists")


FORMATS: dict[str, type[JsonLines] | type[CsvRows]] = {".jsonl": JsonLines, ".ndjson": JsonLines, ".csv": CsvRows}


def output_format(path: Path, top_k: int) -> JsonLines | CsvRows:
    try:
        return FORMATS[path.suffix.lower()](top_k)
    except KeyError:
        raise InvalidInput(
            f"--out {path}: name a .jsonl or .csv file (the suffix picks the format)", "bad_output"
        ) from None


class ResultsFile:
    """The results, opened for appending. What is already there is read first: ``done`` holds its
    paths, ``rows`` and ``failed`` count its lines; an incomplete last line is cut off."""

    def __init__(self, path: Path, format: JsonLines | CsvRows):
        self.path, self.format = path, format
        self.done: set[str] = set()
        self.rows = self.failed = 0
        if path.exists():
            self._read_back()
        self.file: TextIO = open(path, "a", encoding="utf-8", newline="")
        if self.file.tell() == 0:
            self.file.write(format.header())
            self.file.flush()

    def _read_back(self) -> None:
        with open(self.path, "rb") as file:
            complete = _end_of_last_line(file)  # what follows it is a line cut short: dropped
            file.seek(0)
            reader = _LineReader(file, complete)
            kept = 0
            try:
                for name, failed in self.format.read(reader):
                    self.done.add(name)
                    self.rows += 1
                    self.failed += failed
                    kept = reader.consumed
            except (ValueError, csv.Error, UnicodeDecodeError) as error:
                # a CSV field holding a newline, cut short after it, ends as a csv.Error at the very end
                if reader.consumed < complete or not isinstance(error, csv.Error):
                    raise InvalidInput(
                        f"--resume: {self.path} is not a clip-classify output of this format and top-k, or is "
                        f"damaged: line {reader.lines}: {error}",
                        "bad_output",
                    ) from None
        with open(self.path, "r+b") as file:
            file.truncate(kept)

    def write(self, records: Sequence[Record]) -> None:
        self.file.write("".join(self.format.encode(record) for record in records))
        self.file.flush()
        self.rows += len(records)
        self.failed += sum(record["error"] is not None for record in records)

    def close(self) -> None:
        self.file.close()


class _LineReader:
    """The complete lines of a binary file, decoded, counting the bytes and lines handed out."""

    def __init__(self, file, end: int):
        self.file, self.end = file, end
        self.consumed = self.lines = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.consumed >= self.end:
            raise StopIteration
        raw = self.file.readline()
        self.consumed += len(raw)
        self.lines += 1
        return raw.decode("utf-8")


def _end_of_last_line(file) -> int:
    """The offset just past the file's last newline (0 if it has none)."""
    position = file.seek(0, os.SEEK_END)
    while position > 0:
        step = min(1 << 16, position)
        position -= step
        file.seek(position)
        newline = file.read(step).rfind(b"\n")
        if newline >= 0:
            return position + newline + 1
    return 0


class EmbeddingsFile:
    """A float32 (rows, dim) .npy that grows: rows are appended and the header's shape rewritten in
    place (numpy leaves room in the header for the first dimension to grow)."""

    def __init__(self, path: Path, dim: int, rows: int):
        """Cut back to ``rows`` rows (those of the results' complete lines) when it exists."""
        self.path, self.dim = path, dim
        if path.exists():
            self.file = open(path, "r+b")
            self.data_start = self._check_header()
            self._cut_to(rows)
        elif rows:
            raise InvalidInput(
                f"--embeddings {path} does not exist but the results already hold {rows} lines: "
                f"its rows could not line up with them; resume without --embeddings, or start both anew",
                "bad_output",
            )
        else:
            self.file = open(path, "w+b")
            self.rows = 0
            self.data_start = self._write_header()

    def _check_header(self) -> int:
        try:
            read_header = HEADER_READERS.get(np.lib.format.read_magic(self.file))
            if read_header is None:
                raise ValueError("a .npy format version other than 1.0 or 2.0")
            shape, fortran_order, dtype = read_header(self.file)
        except ValueError as error:
            raise InvalidInput(f"--resume: {self.path} is not a .npy file: {error}", "bad_output") from None
        if dtype != EMBEDDING_DTYPE or fortran_order or len(shape) != 2 or shape[1] != self.dim:
            raise InvalidInput(
                f"--resume: {self.path} holds {dtype} {shape}, not float32 rows of {self.dim} "
                f"(written with another checkpoint?)",
                "bad_output",
            )
        return self.file.tell()

    def _cut_to(self, rows: int) -> None:
        row_bytes = self.dim * EMBEDDING_DTYPE.itemsize
        present = (self.file.seek(0, os.SEEK_END) - self.data_start) // row_bytes
        if present < rows:
            raise InvalidInput(
                f"--resume: {self.path} has {present} rows but the results have {rows} lines: "
                f"they do not belong together",
                "bad_output",
            )
        self.file.truncate(self.data_start + rows * row_bytes)
        self.rows = rows
        self._rewrite_header()

    def _write_header(self) -> int:
        """Writes the header at the start; returns where the data begins."""
        self.file.seek(0)
        header = {"descr": EMBEDDING_DTYPE.str, "fortran_order": False, "shape": (self.rows, self.dim)}
        np.lib.format.write_array_header_1_0(self.file, header)
        self.file.flush()
        return self.file.tell()

    def _rewrite_header(self) -> None:
        if self._write_header() != self.data_start:  # numpy pads the header so that it never has to grow
            raise RuntimeError(f"the .npy header of {self.path} changed length")

    def append(self, embeddings: np.ndarray) -> None:
        self.file.seek(0, os.SEEK_END)
        self.file.write(np.ascontiguousarray(embeddings, dtype=EMBEDDING_DTYPE).tobytes())
        self.rows += len(embeddings)
        self._rewrite_header()

    def close(self) -> None:
        self.file.close()
