"""The small pieces of a provenance record: the code version, config differences, JSON records on disk.

Kept apart from the stage registry (local/bin/stages.py) because the trainer
uses them too, to say why it will not resume a checkpoint.
"""
from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from local.utils.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
SECRET_WORDS = ("key", "token", "secret", "password")


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """{"commit": the checkout's HEAD or None, "dirty": whether tracked files differ from it}."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def drop_secrets(obj: Any) -> Any:
    """A copy of a config without the keys that may hold credentials.

    A key is dropped when one of the words of its name (split at ``_`` and
    non-letters, any case) is key, token, secret or password and its value
    could be a credential, i.e. is not a number, bool or None: ``api_key:
    sk-...`` and ``HF_TOKEN`` go; ``max_new_tokens`` and ``tokenizer`` stay.
    """
    if isinstance(obj, Mapping):
        return {k: drop_secrets(v) for k, v in obj.items()
                if not (set(re.split(r"[^a-z]+", str(k).lower())) & set(SECRET_WORDS)
                        and not (v is None or isinstance(v, (bool, int, float))))}
    if isinstance(obj, (list, tuple)):
        return [drop_secrets(v) for v in obj]
    return obj


def describe_code(code: Mapping[str, Any] | None) -> str:
    if not code or not code.get("commit"):
        return "an unknown code version"
    return code["commit"][:10] + (" (with uncommitted changes)" if code.get("dirty") else "")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}; a non-dict is its own leaf."""
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) and v else {f"{prefix}{k}": v})
    return out


def config_changes(old: Mapping, new: Mapping, limit: int | None = 6) -> list[str]:
    """``"key: old -> new"`` for the dotted keys whose values differ between two nested configs."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    shown = keys if limit is None else keys[:limit]
    changes = [f"{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}" for k in shown]
    return changes + ([f"... {len(keys) - len(shown)} more"] if len(keys) > len(shown) else [])


def read_json(path: Path | str) -> Any | None:
    """The JSON in ``path``; None when it is missing or unreadable (a record cut short is no record)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path | str, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, ensure_ascii=False, default=str) + "\n")
