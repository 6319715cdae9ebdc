"""The reference libraries of the equivalence tests (setup.py's ``test`` extra) are installed and usable.

Those tests fail, rather than skip, without their reference; this one fails first and names every
missing package at once, with the command that installs them, so a CI run without the extra says
so in one line instead of in a dozen tracebacks.
"""
from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers.reference import INSTALL, REFERENCES

SETUP_PY = Path(__file__).resolve().parents[2] / "setup.py"


def extra_requirements() -> list[Requirement]:
    """The requirements of setup.py's ``extras_require["test"]`` (read, not executed)."""
    for node in ast.walk(ast.parse(SETUP_PY.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "extras_require" for t in node.targets):
            return [Requirement(r) for r in ast.literal_eval(node.value)["test"]]
    raise AssertionError(f"{SETUP_PY} has no extras_require")


def problems() -> list[str]:
    """What is missing: test-extra distributions not installed (or at a version outside the range), and
    reference libraries whose import fails (a module they import included, e.g. librosa under funasr)."""
    out = []
    for req in extra_requirements():
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{req.name} is not installed (setup.py: {req})")
            continue
        if not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name} {version} is installed, setup.py needs {req}")
    for package, load in REFERENCES.items():
        try:
            load()
        except ImportError as e:
            out.append(f"{package} cannot be imported ({type(e).__name__}: {e})")
    return out


def check() -> None:
    found = problems()
    if found:
        pytest.fail("the reference libraries of the equivalence tests are missing: " + "; ".join(found)
                    + f". {INSTALL}", pytrace=False)


def test_every_reference_library_is_installed_and_importable():
    check()


def test_every_reference_library_the_tests_load_is_in_the_test_extra():
    extra = {canonicalize_name(r.name) for r in extra_requirements()}
    assert {canonicalize_name(p) for p in REFERENCES} <= extra
    assert {"pytest", "pytest-timeout"} <= extra  # pytest.ini's timeout needs the plugin


@pytest.mark.parametrize("hidden, named", [("trl", "trl"), ("funasr", "funasr"),
                                           ("pytorch_metric_learning", "pytorch-metric-learning"),
                                           ("librosa", "librosa")])
def test_a_hidden_reference_library_fails_the_check_naming_it(monkeypatch, hidden, named):
    """The check can fail: with one library made unimportable, it fails, names it and says how to install."""
    for name in [m for m in sys.modules if m == hidden or m.startswith(hidden + ".")] or [hidden]:
        monkeypatch.setitem(sys.modules, name, None)
    if hidden == "librosa":  # funasr's emotion2vec modules import it: make them import again
        for name in [m for m in sys.modules if m.startswith("funasr.")]:
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(pytest.fail.Exception) as failure:
        check()
    message = str(failure.value)
    assert named in message and "pip install -e '.[test]'" in message, message
