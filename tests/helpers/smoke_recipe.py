"""The CREMA-D recipe at smoke size (``--recipe smoke``: tiny random models) on the fake corpus, as a user runs
it, for the tests of how stages are launched (torchrun, split decoding, Slurm)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers import fake_crema_d

ROOT = Path(__file__).resolve().parents[2]
# dropout draws other masks for the same rows in another process: off, so that runs compare number for number
NO_DROPOUT = "model.connector.semantic.dropout=0"
SFT = f"{NO_DROPOUT} sft.trainer.max_epochs=2 sft.trainer.max_steps=8 sft.trainer.log_every=1"


def build(db: Path) -> Path:
    """The fake CREMA-D with a clip of every actor (all folds' speakers) under ``db``; its root returned."""
    fake_crema_d.build(db, fake_crema_d.every_actor(), seconds=0.6)
    return db / "CREMA-D"


def run(corpus: Path, root: Path, *args: str, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """egs/crema_d/run.sh --recipe smoke with data/, dump/ and exp/ under ``root``."""
    env = dict(env or os.environ, CREMA_D=str(corpus))
    out = subprocess.run([str(ROOT / "egs" / "crema_d" / "run.sh"), "--nj", "1", "--recipe", "smoke",
                          "--baselines", "", "--data_root", str(root / "data"), "--dump_root", str(root / "dump"),
                          "--exp_root", str(root / "exp"), *args], env=env, capture_output=True, text=True,
                         timeout=1200)
    if check:
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def metrics(exp_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(exp_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics(exp_dir) if "loss" in r and r.get("split", "train") == "train"]


def valid_loss(exp_dir: Path) -> float:
    (loss,) = [r["valid_loss"] for r in metrics(exp_dir) if "valid_loss" in r]
    return loss
