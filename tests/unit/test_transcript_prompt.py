"""The text-only cascade (C²SER Table VI, conf/baseline/text_only.yaml, sft.transcript_in_prompt=true): the LM
is trained on prompts that carry each utterance's transcript, an utterance without one stops training with
an error naming it, and the trained model is decoded with the transcript in its prompt, as it was trained."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.sft_recipe import EXPLICIT, spy_training, stage_overrides, transcript, write_recipe
from local.bin.decode import main as decode_main
from local.bin.sft import main as sft_main
from local.bin.shards import main as shards_main
from local.eval.decode import DataDirBatches, decode, generation_kwargs
from local.models.alm import AudioLLM, load_alm
from local.reasoning.prompts import instruction
from local.reasoning.targets import TARGET_TYPES
from local.utils.hydra import compose

CASCADE = ("baseline=text_only", "test_sets=[dev]", "distill.enabled=false", "trainer.max_steps=4",
           "trainer.log_every=1")


def prepared(root: Path) -> Path:
    """The tiny recipe through stage 4 (the text-only model reads the plain shards)."""
    write_recipe(root)
    shards_main(compose(stage_overrides(root, "shards", *CASCADE, e2v=False)))
    return root


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("cascade"))


@pytest.fixture(scope="module")
def cascade(recipe):
    """Stage 6 of the cascade: (the model dir, every batch it trained on)."""
    with pytest.MonkeyPatch.context() as mp:
        seen = spy_training(mp)
        cfg = compose(stage_overrides(recipe, "text_only", *CASCADE, e2v=False))
        assert cfg.sft.transcript_in_prompt and not cfg.model.get("encoder") and not cfg.model.get("e2v")
        sft_main(cfg)
    return Path(cfg.sft.exp_dir) / "model", seen


def test_cascade_trains_on_prompts_carrying_each_utterances_transcript(recipe, cascade):
    _, seen = cascade
    assert len(seen) == 4
    rows = [(u, p) for batch in seen for u, p in zip(batch["utts"], batch["prompts"])]
    utts = utts_of(recipe, "train")
    assert {u for u, _ in rows} == set(utts)
    for utt, prompt in rows:
        assert whose(prompt, utts) == utt  # its own transcript, and no one else's


def test_without_transcript_in_prompt_the_prompts_carry_none(recipe):
    with pytest.MonkeyPatch.context() as mp:
        seen = spy_training(mp)
        sft_main(compose(stage_overrides(recipe, "text_only_no_transcript", *CASCADE,
                                         "sft.transcript_in_prompt=false", e2v=False)))
    assert len(seen) == 4
    for batch in seen:
        for utt, prompt in zip(batch["utts"], batch["prompts"]):
            assert not any(transcript(u) in prompt for u in utts_of(recipe, "train")), (utt, prompt)


@pytest.mark.parametrize("how", ["empty", "absent"])
def test_an_utterance_without_transcript_stops_training_naming_it(tmp_path, how):
    root = tmp_path
    write_recipe(root)
    text = root / "data" / "train" / "text"
    lines = text.read_text().splitlines()
    lines = [(line.split()[0] if how == "empty" else None) if line.startswith("spk1-utt1 ") else line
             for line in lines]
    text.write_text("".join(f"{line}\n" for line in lines if line is not None))
    shards_main(compose(stage_overrides(root, "shards", *CASCADE, e2v=False)))
    cfg = compose(stage_overrides(root, "text_only", *CASCADE, e2v=False))
    with pytest.raises(Exception, match="spk1-utt1"):
        sft_main(cfg)
    assert not (Path(cfg.sft.exp_dir) / "model").exists()


def spy_generate(monkeypatch) -> list[str]:
    """Every prompt the model is asked to generate from, in order."""
    prompts: list[str] = []
    generate = AudioLLM.generate

    def recording_generate(self, wav, wav_lens, batch_prompts, *args, **kwargs):
        prompts.extend(batch_prompts)
        return generate(self, wav, wav_lens, batch_prompts, *args, **kwargs)

    monkeypatch.setattr(AudioLLM, "generate", recording_generate)
    return prompts


def utts_of(root: Path, name: str) -> list[str]:
    return sorted(line.split()[0] for line in (root / "data" / name / "utt2spk").read_text().splitlines())


def whose(prompt: str, utts: list[str]) -> str:
    """The one utterance whose transcript the prompt carries."""
    owners = [u for u in utts if transcript(u) in prompt]
    assert len(owners) == 1, (prompt, owners)
    return owners[0]


def test_the_cascade_model_decodes_with_the_prompts_it_was_trained_on(recipe, cascade, monkeypatch):
    """decode(transcript_in_prompt=True) on the training set asks each utterance exactly what training did."""
    model_dir, seen = cascade
    trained = {u: p for batch in seen for u, p in zip(batch["utts"], batch["prompts"])}
    utts = utts_of(recipe, "train")
    assert sorted(trained) == utts
    asked = spy_generate(monkeypatch)
    records, _ = decode(load_alm(model_dir), DataDirBatches(recipe / "data" / "train", batch_size=2),
                        instruction(TARGET_TYPES[EXPLICIT].instruction), generation_kwargs(4),
                        transcript_in_prompt=True)
    assert [r["utt"] for r in records] == utts and len(asked) == len(utts)
    assert {whose(p, utts): p for p in asked} == trained


def test_stage9_puts_the_transcript_in_the_cascade_models_prompts(recipe, cascade, monkeypatch):
    """Stage 9 knows from the model that it reads transcripts: each dev utterance is asked with its own."""
    asked = spy_generate(monkeypatch)
    cfg = compose(stage_overrides(recipe, "text_only", *CASCADE, "decode.modes=[implicit]", "decode.device=cpu",
                                  e2v=False))
    decode_main(cfg)
    dev = utts_of(recipe, "dev")
    assert sorted(whose(p, dev) for p in asked) == dev
    hyps = Path(cfg.decode.exp_dir) / "decode_dev_implicit" / "hyps.jsonl"
    assert sorted(json.loads(line)["utt"] for line in hyps.read_text().splitlines()) == dev


def test_a_recipe_of_another_label_set_trains_a_model_that_answers_in_it():
    """IEMOCAP's 4 classes: the instructions list them, the read-out reads them; a later stage cannot swap them."""
    from types import SimpleNamespace

    from local.train.sft import training_facts
    from local.utils.hydra import compose

    cfg = compose(["experiment=ambiguity", "corpus.labels=[anger,happiness,neutral,sadness]"])
    labels = list(cfg.corpus.labels)
    facts = training_facts(SimpleNamespace(facts={}), cfg.sft, ("ambiguity_cot",), labels)
    assert facts["labels"] == labels and facts["readout"]["labels"] == labels
    assert "anger, happiness, neutral, sadness" in facts["targets"]["ambiguity_cot"]["text"]
    assert "surprise" not in facts["targets"]["ambiguity_cot"]["text"]
    with pytest.raises(ValueError, match=r"the model this stage continues from answers in \['anger', 'happiness', "
                                         r"'neutral', 'sadness'\]"):
        training_facts(SimpleNamespace(facts=facts), cfg.sft, ("ambiguity_cot",), ["anger", "sadness"])
