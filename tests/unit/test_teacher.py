"""Teachers (offline, hf, openai), the answer cache and the prompt files."""
from __future__ import annotations

import json
import logging
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers.chat_server import ChatServer, chat_answer
from local.reasoning.offline import OfflineTeacher, key_phrase, pick
from local.data.labels import EMOTIONS
from local.reasoning.prompts import PROMPT_DIR, load_prompt, load_questions, prompt_fields, render
from local.reasoning.checks import EIPS_FORMAT
from local.reasoning.targets import TARGET_TYPES, check_target
from local.reasoning.teacher import CachedTeacher, HFTeacher, OpenAITeacher, Request, build_teacher
from local.utils.hydra import compose

ROOT = Path(__file__).resolve().parents[2]
EN_TEXT = "I never imagined the project would end like this."
CMN_TEXT = "我从没想到，这个项目会这样结束。"
ATTRS = {"pitch": "High", "loudness": "Low", "rate": "Medium"}
# The types a teacher writes for an emotion label (the SR types get a sentiment: tests/unit/test_targets.py).
TEACHER_TYPES = [t for t, spec in TARGET_TYPES.items() if spec.task == "er" and spec.from_data is None]


def offline_request(t: str, utt: str = "spk1-utt1", label: str = "anger", text: str = EN_TEXT,
                    lang: str = "en", dist: dict | None = None) -> Request:
    return Request(key=f"{utt} {t}", type=t, utt=utt, label=label, text=text, attrs=dict(ATTRS),
                   dist=dist or {label: 0.75, "sadness" if label != "sadness" else "fear": 0.25}, lang=lang)


# --- prompts ---------------------------------------------------------------------------

def test_every_prompt_file_names_its_source_and_the_loader_strips_it():
    for path in PROMPT_DIR.glob("*.txt"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# Source:"), path.name
        assert not load_prompt(path.stem).startswith("#"), path.name


def test_table_one_prompt_is_verbatim_and_renders():
    text = render("c2ser_explicit_teacher", rate="medium", energy="low", pitch="high", text="a {b} $c", label="fear")
    assert "a speaking rate of medium, a volume level of low, and a pitch of high" in text
    assert "‘a {b} $c’" in text  # braces and dollars in a transcript are kept as they are
    assert text.endswith("Ensure including all speech features and logic of the description.")
    assert load_prompt("cogaudio_prompt_b") == "Please listen to user's speech, directly generate an empathetic response"
    assert render("label_extraction", text="x", labels=", ".join(EMOTIONS)).startswith(
        "Given the following text, determine its corresponding emotion and output only the single most "
        "appropriate emotion label. The possible labels are: anger, happiness, neutral, sadness, surprise, "
        "disgust, fear")


def test_render_names_the_missing_field():
    with pytest.raises(KeyError, match="pitch"):
        render("c2ser_explicit_teacher", rate="low", energy="low", text="x", label="anger")
    assert prompt_fields("eips_teacher") == {"text", "label"}


def test_every_target_type_has_its_prompts():
    for spec in TARGET_TYPES.values():
        assert spec.from_data or load_prompt(spec.teacher_prompt)
        assert spec.instruction in ("questions", "record") or load_prompt(spec.instruction)


def test_question_pool_holds_the_papers_questions():
    pool = load_questions()
    assert set(pool) == {"emotion", "emotion_eval", "sentiment", "sentiment_eval", "asr", "asr_eval"}
    assert "What emotions do you think the speaker is expressing?" in pool["emotion"]
    assert "How would you describe the tone of the speaker's voice?" in pool["emotion"]
    assert len(pool["emotion"]) >= 13 and len(set(pool["emotion"])) == len(pool["emotion"])
    assert all("positive, negative, or neutral" in q or "sentiment" in q for q in pool["sentiment"])


# --- offline ----------------------------------------------------------------------------

def test_offline_is_deterministic_across_processes():
    """The phrasing choice uses sha256, so another interpreter (other hash seed) writes the same text."""
    requests = [offline_request(t) for t in TEACHER_TYPES]
    here = OfflineTeacher().generate(requests)
    assert here == OfflineTeacher().generate(requests)
    code = ("import json, sys; from local.reasoning.offline import OfflineTeacher; "
            "from local.reasoning.teacher import Request; "
            "rs = [Request(**d) for d in json.load(sys.stdin)]; "
            "print(json.dumps(OfflineTeacher().generate(rs)))")
    payload = json.dumps([r.__dict__ for r in requests])
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, text=True,
                             check=True, cwd=ROOT, env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)})
        assert json.loads(out.stdout) == here


def test_offline_has_several_phrasings_per_type():
    for t in TEACHER_TYPES:
        answers = OfflineTeacher().generate([offline_request(t, utt=f"spk1-utt{i:03d}") for i in range(60)])
        expected = 2 if t == "direct_response" else 3
        assert len(set(answers)) >= expected, t
    assert pick(["a", "b", "c"], "spk1-utt1", "x") == pick(["a", "b", "c"], "spk1-utt1", "x")


@pytest.mark.parametrize("lang,text", [("en", EN_TEXT), ("cmn", CMN_TEXT)])
@pytest.mark.parametrize("label", ["anger", "happiness", "neutral", "sadness", "surprise", "disgust", "fear"])
def test_offline_formats(label, lang, text):
    teacher = OfflineTeacher()
    get = lambda t: teacher.generate([offline_request(t, label=label, text=text, lang=lang)])[0]  # noqa: E731

    explicit = get("c2ser_explicit")
    assert explicit.endswith(f"the emotion was inferred to be {label}.")
    assert f'"{text}"' in explicit
    assert re.search(r"(high-pitched|raised) tone", explicit) and re.search(r"(soft|quiet) volume", explicit)
    assert re.search(r"(moderate|steady) (pace|speaking rate)", explicit)

    implicit = get("c2ser_implicit")
    assert label in implicit and len(implicit.split()) < 10

    eips = EIPS_FORMAT.fullmatch(get("eips"))
    assert eips and label in eips["thought"]
    assert re.search(r"Emotion perception: .+ Intent: .+ Psychological modelling: .+ Strategy: .+", eips["thought"])
    assert bool(re.search(r"[\u4e00-\u9fff]", eips["response"])) == (lang == "cmn")

    response = get("direct_response")
    assert response and "<" not in response

    ambiguity = get("ambiguity_cot").splitlines()
    assert [l.split(":")[0].split(".")[0] for l in ambiguity] == \
        ["Keywords", "Step 1", "Step 2", "Step 3", "Distribution"]
    minority = "sadness" if label != "sadness" else "fear"
    assert label in ambiguity[2] and minority in ambiguity[2]
    assert ambiguity[-1] == f"Distribution: {label}:0.75 {minority}:0.25"
    assert f'"{text}"' in ambiguity[1]

    assert label in get("summarize")
    elaborate = get("elaborate")
    quote = re.search(r'"([^"]+)"', elaborate).group(1)
    assert quote == key_phrase(text) and quote in text

    for t in TEACHER_TYPES:
        request = offline_request(t, label=label, text=text, lang=lang)
        assert check_target(request, teacher.generate([request])[0]) is None, t


def test_the_offline_teachers_seed_draws_other_phrasings_reproducibly():
    """teacher.seed is a real teacher setting: another seed gives other (valid) targets, the same seed the same."""
    requests = [offline_request(t, utt=f"spk1-utt{i:03d}") for t in ("c2ser_explicit", "eips") for i in range(20)]
    base, other = OfflineTeacher().generate(requests), OfflineTeacher(seed=3).generate(requests)
    assert other == OfflineTeacher(seed=3).generate(requests) and sum(a != b for a, b in zip(base, other)) >= 10
    assert all(check_target(r, a) is None for r, a in zip(requests, other))
    assert OfflineTeacher(seed=3).cache_key(requests[0]) != OfflineTeacher().cache_key(requests[0])


def test_offline_fails_a_request_with_a_bad_attribute_level_and_rejects_options():
    bad = offline_request("c2ser_explicit")
    bad.attrs["rate"] = "Loud"
    assert OfflineTeacher().generate([bad, offline_request("eips")])[0] is None
    with pytest.raises(ValueError, match="takes one option, seed"):
        build_teacher({"backend": "offline", "model": "x"})


# --- openai-compatible HTTP -----------------------------------------------------------------

class FakeServer(ChatServer):
    """A chat-completions server whose behaviour is chosen by the prompt text; ``counts`` per prompt."""

    def __init__(self, sleep: float):
        self.counts: Counter = Counter()
        lock = threading.Lock()

        def respond(body):
            prompt = body["messages"][-1]["content"]
            with lock:
                self.counts[prompt] += 1
                n = self.counts[prompt]
            if prompt.startswith("flaky") and n == 1:
                return 500, "overloaded"
            if prompt.startswith("slow"):
                time.sleep(sleep)
            if prompt.startswith("garbage"):
                return 200, "<html>not json</html>"
            if prompt.startswith("nochoices"):
                return 200, {"object": "error"}
            if prompt.startswith("refused"):
                return 400, "bad request"
            return 200, chat_answer(f"answer to {prompt}")

        super().__init__(respond)


@pytest.fixture
def server():
    s = FakeServer(sleep=1.0)
    yield s
    s.close()


SECRET = "sk-test-Zq8vX2secret"


def test_openai_retries_caches_and_never_leaks_the_key(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EMOREASON_TEST_KEY", SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache" / "teacher.sqlite"

    def teacher():
        return CachedTeacher(OpenAITeacher(server.url, "test-model", api_key_env="EMOREASON_TEST_KEY",
                                           timeout=0.5, max_retries=2, backoff=0.01, workers=3), cache)

    prompts = ["good 1", "good 2", "flaky 1", "slow 1", "garbage 1", "nochoices 1", "refused 1"]
    requests = [Request(key=f"u{i} test", type="test", prompt=p) for i, p in enumerate(prompts)]

    first = teacher()
    answers = first.generate(requests)
    assert answers == ["answer to good 1", "answer to good 2", "answer to flaky 1", None, None, None, None]
    assert server.counts == {"good 1": 1, "good 2": 1, "flaky 1": 2, "slow 1": 3, "garbage 1": 3,
                             "nochoices 1": 3, "refused 1": 1}
    with sqlite3.connect(cache) as db:
        assert sorted(a for (a,) in db.execute("SELECT answer FROM answers")) == \
            ["answer to flaky 1", "answer to good 1", "answer to good 2"]
    first.close()

    before = Counter(server.counts)
    again = teacher()
    assert again.generate(requests) == answers
    asked = server.counts - before
    assert asked == {"slow 1": 3, "garbage 1": 3, "nochoices 1": 3, "refused 1": 1}  # only the failures
    again.close()

    assert set(server.auth) == {f"Bearer {SECRET}"}
    assert SECRET not in caplog.text and "attempt" in caplog.text
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in cache.parent.iterdir())
    assert SECRET not in repr(again) and SECRET not in repr(again.inner) and SECRET not in str(vars(again.inner))


def test_openai_config_builds_a_cached_teacher(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cfg = compose(["teacher=openai", f"teacher.base_url={server.url}", f"data_root={tmp_path}",
                   "teacher.timeout=2", "teacher.max_retries=0"])
    from omegaconf import OmegaConf
    teacher = build_teacher(OmegaConf.to_container(cfg.teacher, resolve=True))
    assert isinstance(teacher, CachedTeacher) and isinstance(teacher.inner, OpenAITeacher)
    assert teacher.path == tmp_path / "cache" / "teacher_openai.sqlite"
    assert teacher.generate([Request(key="k", type="t", prompt="good 9")]) == ["answer to good 9"]
    assert server.auth == [""]  # no key in the environment: no Authorization header
    teacher.close()


def test_cache_key_follows_model_prompt_and_sampling():
    a = OpenAITeacher("http://x/v1", "m1", api_key_env=None)
    b = OpenAITeacher("http://x/v1", "m2", api_key_env=None)
    sampled = OpenAITeacher("http://x/v1", "m1", api_key_env=None, temperature=0.7)
    r1, r2 = Request(key="u1 t", type="t", prompt="p"), Request(key="u2 t", type="t", prompt="p")
    assert a.cache_key(r1) == a.cache_key(r2)          # greedy: the same prompt has one answer
    assert a.cache_key(r1) != b.cache_key(r1)          # another model
    assert a.cache_key(r1) != a.cache_key(Request(key="u1 t", type="t", prompt="q"))
    assert sampled.cache_key(r1) != sampled.cache_key(r2)  # sampling: one sample per utterance


# --- hf -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_lm")
    sentences = ["the speaker sounds angry and loud", "the speaker is happy today",
                 "a calm and neutral voice says hello", "describe the emotion of the speech"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<eos>")
    tokenizer.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # special tokens can never win the argmax: every answer is words
        for name in ("<pad>", "<unk>", "<eos>"):
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(name)] = 0.0
    model.save_pretrained(path)
    return path


def test_hf_teacher_generates_a_batch(tiny_lm):
    teacher = HFTeacher(str(tiny_lm), max_new_tokens=4, batch_size=2, device="cpu")
    requests = [Request(key=f"u{i} t", type="t", prompt=p) for i, p in
                enumerate(["the speaker sounds angry", "describe the emotion of the speech today", "hello"])]
    answers = teacher.generate(requests)
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
    assert all(len(a.split()) == 4 for a in answers)
    # Left padding must not change a greedy answer: each prompt alone gives the same text.
    assert [teacher.generate([r])[0] for r in requests] == answers
    assert teacher.format_prompt(requests[0]) == "the speaker sounds angry"
    assert teacher.name == f"hf:{tiny_lm}"


def test_hf_teacher_uses_the_chat_template(tiny_lm, tmp_path):
    import shutil
    from transformers import AutoTokenizer

    path = tmp_path / "chat_lm"
    shutil.copytree(tiny_lm, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant{% endif %}")
    tokenizer.save_pretrained(path)
    teacher = HFTeacher(str(path), max_new_tokens=3, device="cpu")
    request = Request(key="u t", type="t", messages=[{"role": "system", "content": "be kind"},
                                                     {"role": "user", "content": "hello"}])
    assert teacher.format_prompt(request) == "system be kind user hello assistant"
    assert isinstance(teacher.generate([request])[0], str)
