"""A tiny recipe for the SFT stages (6 and 7), and a spy on what the model trains on.

``write_recipe`` leaves data/{train,dev} as stages 0-3 would (audio, tables, C²SER explicit and
implicit targets, a distinct transcript per utterance); ``stage_overrides`` composes a config
that trains the tiny random model of conf/model/c2ser_tiny.yaml on it in a second or two;
``spy_training`` records the prompts and responses of every batch the model is trained on.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import make_data_dir

EXPLICIT, IMPLICIT = "c2ser_explicit", "c2ser_implicit"


def explicit_target(label: str) -> str:
    return f"The pitch is high and the voice is loud. The emotion was inferred to be {label}."


def implicit_target(label: str) -> str:
    return f"The emotion is {label}."


def transcript(utt: str) -> str:
    """Each utterance's own words, so that a prompt shows whose transcript it carries."""
    return f"these are the words of {utt}"


def write_recipe(root: Path, n_train_utt: int = 2, n_dev_utt: int = 1, n_spk: int = 2) -> Path:
    """``root/data/{train,dev}`` with audio, tables (a distinct transcript per utterance) and targets.jsonl."""
    for name, n_utt in (("train", n_train_utt), ("dev", n_dev_utt)):
        data = root / "data" / name
        shutil.move(make_data_dir(root / f"corpus_{name}", n_spk=n_spk, n_utt=n_utt), data)
        utts = [line.split()[0] for line in sorted((data / "utt2emo").read_text().splitlines())]
        (data / "text").write_text("".join(f"{u} {transcript(u)}\n" for u in utts))
        labels = dict(line.split() for line in (data / "utt2emo").read_text().splitlines())
        with open(data / "targets.jsonl", "w", encoding="utf-8") as f:
            for utt in utts:
                for kind, text in ((EXPLICIT, explicit_target(labels[utt])), (IMPLICIT, implicit_target(labels[utt]))):
                    f.write(json.dumps({"utt": utt, "type": kind, "target": text, "label": labels[utt]}) + "\n")
    return root


def stage_overrides(root: Path, exp_name: str, *extra: str, e2v: bool = True) -> list[str]:
    """Overrides of conf/config.yaml for a tiny CPU run of stages 6-7 on ``write_recipe(root)``: the random
    tiny Emotion2Vec-S unless ``e2v`` is false (a model without one, e.g. baseline=text_only)."""
    return [f"data_root={root / 'data'}", f"dump_root={root / 'dump'}", f"exp_root={root / 'exp'}",
            f"exp_name={exp_name}", *(["model.e2v.path=null"] if e2v else []), "sft.batch_size=2",
            "sft.tokenizer_vocab=300", "trainer.max_epochs=null", "trainer.save_every=null", "trainer.progress=false",
            "nj=1", *extra]


def target_type_of(root: Path) -> dict[str, str]:
    """Target text -> its type, over every set of the recipe."""
    out = {}
    for path in sorted((root / "data").glob("*/targets.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            out[record["target"]] = record["type"]
    return out


def spy_training(monkeypatch) -> list[dict]:
    """Every batch the audio LLM is trained on (forward in training mode), in order:
    {"utts", "prompts", "responses"}."""
    from local.models.alm import AudioLLM

    seen: list[dict] = []
    forward = AudioLLM.forward

    def recording_forward(self, batch, *args, **kwargs):
        if self.training:
            seen.append({"utts": list(batch.get("utts") or []), "prompts": list(batch["prompts"]),
                         "responses": list(batch["responses"])})
        return forward(self, batch, *args, **kwargs)

    monkeypatch.setattr(AudioLLM, "forward", recording_forward)
    return seen


def train_records(exp_dir: Path) -> list[dict]:
    """The train-split records of a stage's metrics.jsonl."""
    records = [json.loads(line) for line in (Path(exp_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("split") == "train"]
