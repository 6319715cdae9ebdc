"""The class-name distribution read-out (local/models/readout.py) and the CE + λ·KL SFT loss (ambiguity Eq. 3),
on test_alm's tiny random audio LLM: against a brute force that scores each name on its own full sequence."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import make_data_dir
from local.bin.sft import main as sft_main
from local.data.labels import EMOTIONS
from local.models.alm import IGNORE_INDEX, AudioLLM, load_alm
from local.models.readout import Readout, gold_distributions
from local.train.sft import ReadoutSFT, sft_loss
from local.utils.hydra import compose
from test_alm import PROMPT, build_tiny, make_batch, tiny_dirs  # noqa: F401  (tiny_dirs: the tiny LM fixture)

TEXTS = [
    "The pitch is high and the volume is loud.\nDistribution: anger:0.75 fear:0.25",  # gold-like: cut at the prefix
    "A slow low voice, so the emotion is sadness.",                                      # no prefix: kept whole
]


def brute_force(model, readout: Readout, batch: dict, prompts, texts) -> torch.Tensor:
    """log p(separator + name | prompt, audio, context) summed over the name's tokens, one utterance and one
    name at a time, each on its own unpadded sequence with the whole string tokenised jointly."""
    tok = model.tokenizer
    audio = model.audio_tokens({**batch, "prompts": list(prompts)})
    out = torch.zeros(len(texts), len(readout.labels))
    for i, text in enumerate(texts):
        context = readout.context(text)
        context_ids = tok(context, add_special_tokens=False).input_ids
        for c, label in enumerate(readout.labels):
            full = context + readout.separator + label
            full_ids = tok(full, add_special_tokens=False).input_ids
            assert full_ids[:len(context_ids)] == context_ids, (text, label)  # the name is separable here too
            n_name = len(full_ids) - len(context_ids)
            embeds, mask, labels = model.assemble([prompts[i]], [audio[i]], [full])
            logp = model.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, :-1].float().log_softmax(-1)
            target = labels[0, 1:]
            positions = (target != IGNORE_INDEX).nonzero()[:, 0][-1 - n_name:-1]  # the name's tokens, not the eos
            out[i, c] = logp[positions, target[positions]].sum()
    return out


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return build_tiny(tiny_dirs).eval()


def test_context_is_cut_at_the_last_prefix(model):
    r = Readout(model.tokenizer, answer_prefix="\nDistribution:")
    assert r.context("Step 3: mixed.\nDistribution: anger:0.5 fear:0.5") == "Step 3: mixed.\nDistribution:"
    assert r.context("no answer line") == "no answer line\nDistribution:"
    assert r.context("a\nDistribution: x\nDistribution: y") == "a\nDistribution: x\nDistribution:"
    assert r.context("") == "\nDistribution:"


def test_equals_the_brute_force_with_multi_token_names(model):
    readout = Readout(model.tokenizer)
    lengths = [len(ids) for ids in readout.name_ids]
    assert readout.labels == EMOTIONS and max(lengths) > 1 and min(lengths) == 1  # both kinds of names
    batch = make_batch(lengths=(8000, 12800))
    prompts = [PROMPT, "Describe the speaking rate, pitch and volume, then infer the emotion."]
    with torch.no_grad():
        scores = readout.scores(model, batch, prompts, TEXTS)
        want = brute_force(model, readout, batch, prompts, TEXTS)
        logq = readout.logprobs(model, batch, prompts, TEXTS)
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(logq, want.log_softmax(-1), atol=1e-5, rtol=0)
    dists = readout.distributions(model, batch, prompts, TEXTS)
    assert list(dists[0]) == list(EMOTIONS)
    np.testing.assert_allclose([list(d.values()) for d in dists], want.softmax(-1).numpy(), atol=1e-5)
    # the batch is not needed: each row alone reads the same
    with torch.no_grad():
        alone = readout.scores(model, {"wav": batch["wav"][1:], "wav_lens": batch["wav_lens"][1:]},
                               prompts[1:], TEXTS[1:])
    torch.testing.assert_close(alone[0], scores[1], atol=1e-5, rtol=1e-6)  # scores near -60: float32 ulps


def test_single_token_names_are_the_logit_readout(model):
    full = Readout(model.tokenizer)
    single = [label for label, ids in zip(full.labels, full.name_ids) if len(ids) == 1]
    assert len(single) >= 2, single
    readout = Readout(model.tokenizer, labels=single)
    batch = make_batch(lengths=(8000, 12800))
    contexts = [readout.context(t) for t in TEXTS]
    with torch.no_grad():
        got = readout.logprobs(model, batch, [PROMPT] * 2, TEXTS)
        out = model({**batch, "prompts": [PROMPT] * 2, "responses": contexts})  # [..., context, eos]
    ids = [ids[0] for ids in readout.name_ids]
    for i in range(2):
        answer = (out.labels[i] != IGNORE_INDEX).nonzero()[-1, 0] - 1  # the last context token
        torch.testing.assert_close(got[i], out.logits[i, answer, ids].log_softmax(-1), atol=1e-5, rtol=0)


def test_gradients_reach_the_lm_and_the_connectors(tiny_dirs):
    model = build_tiny(tiny_dirs).train()
    readout = Readout(model.tokenizer)
    logq = readout.logprobs(model, make_batch(), [PROMPT] * 2, TEXTS)
    assert logq.requires_grad
    assert len(readout.name_ids[0]) == 1 and len(readout.name_ids[6]) > 1
    (-logq[:, 0].sum() - logq[1, 6]).backward()  # anger (one token), fear (several)
    for name, part in (("lm", model.lm), ("connectors", model.connectors), ("utterance_proj", model.utterance_proj)):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_a_name_that_merges_with_the_prefix_is_an_error(model):
    # byte-level BPE puts the space in front of the word: "Distribution: " + "anger" is "…:", " anger"
    with pytest.raises(ValueError, match=r"label 'anger' cannot be separated.*readout.separator"):
        Readout(model.tokenizer, answer_prefix="Distribution: ", separator="")
    Readout(model.tokenizer, answer_prefix="Distribution:", separator=" ")  # the same text, split right
    with pytest.raises(ValueError, match="distinct"):
        Readout(model.tokenizer, labels=["anger", "anger"])
    with pytest.raises(ValueError, match="empty"):
        Readout(model.tokenizer, answer_prefix="")


def test_gold_distributions():
    batch = {"utts": ["u1", "u2", "u3"],
             "meta": [{"dist": {"anger": 0.5, "surprise": 0.25, "fear": 0.25}, "label": "anger"},
                      {"label": "sadness"},  # no utt2dist: the hard label
                      {"dist": {"anger": 0.2, "neutral": 0.8}}]}
    got = gold_distributions(batch, ["anger", "fear", "neutral", "sadness"])  # surprise is not a candidate
    torch.testing.assert_close(got, torch.tensor([[2 / 3, 1 / 3, 0, 0], [0, 0, 0, 1], [0.2, 0, 0.8, 0]]))
    with pytest.raises(ValueError, match="u1: soft label"):
        gold_distributions({"utts": ["u1"], "meta": [{"dist": {"surprise": 1.0}}]}, ["anger"])
    with pytest.raises(ValueError, match="u9: neither a soft label"):
        gold_distributions({"utts": ["u9"], "meta": [{}]}, ["anger"])


# --- CE + λ·KL SFT ----------------------------------------------------------------------------

def test_sft_loss_is_ce_plus_lambda_kl(model):
    readout = Readout(model.tokenizer, labels=["anger", "neutral", "sadness", "fear"])
    batch = {**make_batch(responses=TEXTS), "prompts": [PROMPT] * 2, "utts": ["a", "b"],
             "meta": [{"dist": {"anger": 0.75, "fear": 0.25}}, {"dist": {"sadness": 0.6, "neutral": 0.4}}]}
    with torch.no_grad():
        ce = model(batch).loss
        q = brute_force(model, readout, batch, batch["prompts"], TEXTS).softmax(-1).double().numpy()
        p = np.array([[0.75, 0, 0, 0.25], [0, 0.4, 0.6, 0]])
        kl = np.mean([sum(pk * math.log(pk / qk) for pk, qk in zip(pr, qr) if pk > 0) for pr, qr in zip(p, q)])

        loss0, logs0 = sft_loss(model, batch, 0.0)
        assert logs0 == {} and float(loss0) == float(ce)  # λ = 0: the audio LLM's own CE, nothing else run
        loss, logs = sft_loss(ReadoutSFT(model, readout), batch, 0.7)
    assert float(logs["ce"]) == pytest.approx(float(ce), abs=1e-6)
    assert float(logs["kl"]) == pytest.approx(kl, abs=1e-5)
    assert float(loss) == pytest.approx(float(ce) + 0.7 * kl, abs=1e-5)


@pytest.fixture(scope="module")
def ambiguity_recipe(tmp_path_factory):
    """data/{train,dev} with soft labels and ambiguity_cot targets, as stages 0-3 would leave them."""
    root = tmp_path_factory.mktemp("recipe")
    for name in ("train", "dev"):
        shutil.move(make_data_dir(root / f"corpus_{name}", n_spk=2, n_utt=2), root / "data" / name)
        utts = [line.split()[0] for line in (root / "data" / name / "utt2emo").read_text().splitlines()]
        dist = {u: ("anger:0.7500 sadness:0.2500" if i % 2 else "neutral:1.0000") for i, u in enumerate(utts)}
        (root / "data" / name / "utt2dist").write_text("".join(f"{u} {d}\n" for u, d in dist.items()))
        with open(root / "data" / name / "targets.jsonl", "w", encoding="utf-8") as f:
            for u in utts:
                target = f"Step 3: Synthesis. The voice decides.\nDistribution: {dist[u]}"
                f.write(json.dumps({"utt": u, "type": "ambiguity_cot", "target": target}) + "\n")
    return root


@pytest.mark.slow
def test_stage_6_with_kl_logs_it_and_saves_the_audio_llm(ambiguity_recipe):
    cfg = compose([f"data_root={ambiguity_recipe / 'data'}", f"dump_root={ambiguity_recipe / 'dump'}",
                   f"exp_root={ambiguity_recipe / 'exp'}", "exp_name=amb", "model.e2v.path=null",
                   "sft.explicit=ambiguity_cot", "sft.implicit=ambiguity_cot", "sft.kl_weight=1.0",
                   "sft.batch_size=2", "sft.tokenizer_vocab=300", "trainer.max_steps=2", "trainer.max_epochs=null",
                   "trainer.log_every=1", "trainer.valid_every=2", "trainer.progress=false", "trainer.lr=1e-3"])
    sft_main(cfg)
    exp = ambiguity_recipe / "exp" / "amb" / "sft"
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    assert len(train) == 2 and all(r["kl"] > 0 and r["loss"] == pytest.approx(r["ce"] + r["kl"], rel=1e-4)
                                   for r in train)
    assert valid and valid[-1]["valid_kl_ambiguity_cot"] > 0
    assert valid[-1]["valid_loss"] == pytest.approx(valid[-1]["valid_ce_ambiguity_cot"]
                                                    + valid[-1]["valid_kl_ambiguity_cot"], rel=1e-4)
    assert isinstance(load_alm(exp / "model"), AudioLLM)  # the audio LLM, not the wrapper, is what the stage leaves
