"""The reference libraries that tests compare our code against (setup.py's ``test`` extra).

A missing reference library is a test *failure*, never a skip: a skipped equivalence test reads as
a pass in CI while proving nothing.  The loaders raise ImportError (naming what is missing);
:func:`require` turns that into a failure that says which package and how to install it, and
tests/unit/test_reference_libraries.py checks them all at once so that CI fails fast and clearly.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from types import SimpleNamespace
from typing import Callable, TypeVar

import pytest

INSTALL = "install the test extra: pip install -e '.[test]' (or run tools/install.sh, which does)"
T = TypeVar("T")


def import_trl() -> SimpleNamespace:
    """TRL's GRPO and DPO trainer modules, imported with wandb hidden (ImportError when TRL is missing).

    TRL imports wandb only to log.  On this stack importing wandb after torch and transformers
    takes ~30 s (its pydantic models read attribute docstrings through inspect.getsource, which
    walks sys.modules per class); a None entry in sys.modules makes every availability check
    answer "not installed" for the duration of the import.
    """
    with pytest.MonkeyPatch.context() as mp:
        if "wandb" not in sys.modules:
            mp.setitem(sys.modules, "wandb", None)
        grpo = importlib.import_module("trl.trainer.grpo_trainer")
        dpo = importlib.import_module("trl.trainer.dpo_trainer")
        utils = importlib.import_module("trl.trainer.utils")
        version = importlib.import_module("trl").__version__
    return SimpleNamespace(grpo=grpo, dpo=dpo, utils=utils, version=version)


def import_funasr_emotion2vec() -> type:
    """FunASR's ``Emotion2vec`` class, imported without running ``funasr/__init__.py``; raises ImportError
    when funasr (or what its emotion2vec modules import, librosa among them) is missing.

    That file imports FunASR's whole training stack (wandb among it: 40-50 s on
    the CI machine) to register every model; the emotion2vec modules need none of it.
    """
    spec = importlib.util.find_spec("funasr")
    if spec is None:
        raise ImportError("No module named 'funasr'", name="funasr")
    stub = None
    if "funasr" not in sys.modules:
        stub = types.ModuleType("funasr")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["funasr"] = stub
    try:
        from funasr.models.emotion2vec.model import Emotion2vec
    finally:
        if stub is not None and sys.modules.get("funasr") is stub:
            del sys.modules["funasr"]
    return Emotion2vec


def import_pml_losses() -> types.ModuleType:
    """pytorch_metric_learning.losses (SupConLoss)."""
    return importlib.import_module("pytorch_metric_learning.losses")


# setup.py's test-extra distribution -> the loader of what the tests use from it
def import_trl_with_sapo() -> SimpleNamespace:
    """:func:`import_trl`, and ImportError when it is too old to have loss_type="sapo"."""
    trl = import_trl()
    if not has_sapo(trl):
        raise ImportError(f"trl {trl.version} has no loss_type='sapo' (added in trl 0.26; the test extra needs "
                          "trl>=0.26)", name="trl")
    return trl


REFERENCES: dict[str, Callable[[], object]] = {
    "trl": import_trl_with_sapo,
    "funasr": import_funasr_emotion2vec,
    "pytorch-metric-learning": import_pml_losses,
}


def has_sapo(trl: SimpleNamespace) -> bool:
    """Whether TRL's GRPOTrainer has loss_type="sapo" (trl >= 0.26)."""
    return hasattr(trl.grpo.GRPOTrainer, "get_sapo_token_loss")


def require(package: str, loader: Callable[[], T]) -> T:
    """``loader()``, or a test failure naming ``package``, what is missing and how to install it."""
    try:
        return loader()
    except ImportError as e:
        why = f"{type(e).__name__}: {e}"
    pytest.fail(f"reference library {package} is not usable ({why}); the test compares our code against it, "
                f"so it fails rather than skips: {INSTALL}", pytrace=False)
