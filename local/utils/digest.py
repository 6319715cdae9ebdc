"""Content digests of files and directories: what a stage's inputs and outputs *are*, not what they are called.

A stage is skipped, a checkpoint resumed and a cache reused only when the
content it was made from is the same, so these digests are sha256 of bytes,
never of names or time stamps.  Hashing a 1 GB checkpoint on every
``./run.sh`` would cost seconds per stage, so a file's digest is remembered in
a small sqlite table keyed by what ``stat`` says about it (path, size, mtime,
ctime, inode), as git's index does: a rewritten file has a new ctime (an
atomic rename a new inode too), so a stale entry is never used.  The table
lives in ``$EMOREASON_DIGEST_CACHE`` (default
``~/.cache/emoreason/digests.sqlite``); when it cannot be opened the digests
are simply computed.

Directory digests cover every regular file below, by relative path, except
names starting with "." (temp files, locks) and ``provenance.json`` (the
record a stage writes about the directory, which must not change what it
describes).
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Iterable

RECORD = "provenance.json"


@lru_cache(maxsize=1)
def _cache() -> sqlite3.Connection | None:
    path = Path(os.environ.get("EMOREASON_DIGEST_CACHE") or Path.home() / ".cache" / "emoreason" / "digests.sqlite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS digests (key TEXT PRIMARY KEY, digest TEXT)")
        return db
    except (OSError, sqlite3.Error):
        return None


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"


def file_digest(path: Path | str) -> str:
    """sha256 (hex) of a file's bytes."""
    path = Path(path)
    key = _stat_key(path)
    db = _cache()
    if db is not None:
        try:
            row = db.execute("SELECT digest FROM digests WHERE key = ?", (key,)).fetchone()
            if row:
                return row[0]
        except sqlite3.Error:
            db = None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if db is not None:
        try:
            db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?)", (key, digest))
        except sqlite3.Error:
            pass
    return digest


def _listed(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name != RECORD:
                yield Path(dirpath) / name


def tree_digest(root: Path | str, skip: Iterable[str] = ()) -> str:
    """sha256 over (relative path, file digest) of every file below ``root``; ``skip``: top-level names left out."""
    root, skip = Path(root), set(skip)
    h = hashlib.sha256()
    for path in _listed(root):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        h.update(f"{rel.as_posix()}\0{file_digest(path)}\n".encode())
    return h.hexdigest()


def path_digest(path: Path | str) -> str | None:
    """The digest of a file or directory; None when it does not exist."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        return tree_digest(path)
    return None


def source_digest(name_or_path: str) -> str:
    """The identity of a pretrained model named in a config: a local file or dir by content, a hub id by the
    revision the local Hugging Face cache resolves it to (``hf:<id>@<commit>``), else by its name."""
    if Path(name_or_path).exists():
        return path_digest(name_or_path)
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" /
                                                         "huggingface") / "hub")
    ref = hub / f"models--{name_or_path.replace('/', '--')}" / "refs" / "main"
    if ref.is_file():
        return f"hf:{name_or_path}@{ref.read_text().strip()}"
    return f"name:{name_or_path}"


def value_digest(value: object) -> str:
    """sha256 of a JSON-able value with sorted keys: the same value always gives the same digest."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()
