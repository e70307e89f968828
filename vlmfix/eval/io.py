"""Crash-safe files: append-only JSONL that survives ``kill -9``, atomic JSON, content hashes.

Every evaluation writes one JSONL line per finished sample and flushes it, so an interrupted run loses at most the line
being written. That torn last line is the only damage a crash can do, so readers skip it and writers cut it off before
appending again. Final results are written to a temporary file and moved into place, so a results file either exists
complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


def read_jsonl(path, *, tolerate_torn_tail: bool = True) -> list[dict]:
    """All records of a JSONL file; an unparsable *last* line (a crash mid-write) is dropped, any other is an error."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError as exc:
            is_tail = all(not rest.strip() for rest in lines[i + 1:])
            if tolerate_torn_tail and is_tail:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from None
    return out


def iter_records(path) -> Iterator[dict]:
    """Records of a JSONL file, or of a JSON file holding a list (some released question sets are JSON arrays)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list or JSON lines")
        yield from data
        return
    yield from read_jsonl(path, tolerate_torn_tail=False)


def repair_tail(path) -> int:
    """Cut a torn last line off ``path`` so appends start on a fresh line; returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


class JsonlAppender:
    """Appends records one line at a time, flushed and fsynced per batch, after repairing a torn tail."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write_many(self, records: Iterable[dict]):
        for rec in records:
            self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self._f.flush()
        os.fsync(self._f.fileno())

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_json_atomic(path, obj, indent: int = 2):
    """Write JSON through a temporary file in the same directory and ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl_atomic(path, records: Iterable[dict]):
    """Write a whole JSONL file atomically (merged sample files, built question sets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_records(records: Iterable[dict]) -> str:
    """Hash of records in their canonical JSONL form, so built and loaded question sets hash alike."""
    h = hashlib.sha256()
    for rec in records:
        h.update((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    return h.hexdigest()
