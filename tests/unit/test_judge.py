"""Judges: the offline stand-in's rules, reply parsing, and the hf / openai backends failing safely."""
from __future__ import annotations

import logging
import sqlite3
from collections import Counter

import pytest

import local.eval.judge as judge_module
from helpers.chat_server import ChatServer, chat_answer
from helpers.tiny_lm import scripted_lm
from local.eval.judge import (RUBRICS, Judge, JudgeItem, build_judge, eips_steps, extract_quotes, format_reward,
                              generic_fraction, normalise, quotation)
from local.reasoning.offline import OfflineTeacher
from local.reasoning.prompts import PROMPT_DIR, load_prompt, prompt_fields
from local.reasoning.teacher import CachedTeacher, HFTeacher, OpenAITeacher, Request, Teacher
from local.utils.hydra import compose

TEXT = "I never imagined the project would end like this."
SECRET = "sk-judge-Zq8vX2secret"


def item(output: str, label: str = "anger", utt: str = "spk1-utt1", **kw) -> JudgeItem:
    return JudgeItem(utt=utt, output=output, label=label, text=kw.pop("text", TEXT), **kw)


def offline_target(kind: str, label: str = "anger", utt: str = "spk1-utt1") -> str:
    request = Request(key=f"{utt} {kind}", type=kind, utt=utt, label=label, text=TEXT,
                      attrs={"pitch": "High", "loudness": "Low", "rate": "Medium"})
    return OfflineTeacher().generate([request])[0]


# --- prompts and format -------------------------------------------------------------------

def test_rubric_prompts_name_their_source_and_slots():
    slots = {"empathy": {"text", "label", "response"}, "eips": {"text", "label", "thought", "response"},
             "emotion": {"label", "output"}, "grounded": {"text", "label", "quotes"},
             "binary": {"reference", "output", "question"}, "sqa": {"question", "reference", "output"}}
    for name, spec in RUBRICS.items():
        assert (PROMPT_DIR / f"{spec.prompt}.txt").read_text(encoding="utf-8").startswith("# Source:"), name
        assert prompt_fields(spec.prompt) == slots[name], name
    fig5 = load_prompt("judge_grounded")
    assert fig5.startswith("[Ground Truth Emotion]\n${label}\n\n[Ground Truth Transcript]\n${text}")
    assert "Score2: The quotes clearly and directly support the ground truth emotion." in fig5
    assert "Groundedness Score: (int)\nRelevance Score: (int)" in fig5
    assert "Score 1 (text-dependent / generic template)" in load_prompt("judge_empathy")


@pytest.mark.parametrize("text,expected", [
    ("<thought>Emotion perception: anger.</thought><response>I hear it.</response>", 1.0),
    ("  <thought>a</thought>\n<response>b</response>\n", 1.0),
    ("<thought></thought><response>b</response>", 0.0),               # empty thought
    ("<thought>a</thought><response> </response>", 0.0),              # empty response
    ("<response>b</response><thought>a</thought>", 0.0),              # wrong order
    ("<thought>a</thought><response>b</response><response>c</response>", 0.0),
    ("<thought>a<thought>b</thought><response>c</response>", 0.0),
    ("<thought>a</thought><response>b", 0.0),                         # unclosed
    ("Sure! <thought>a</thought><response>b</response>", 0.0),        # text outside the tags
    ("I hear you.", 0.0),
])
def test_format_reward(text, expected):
    assert format_reward(text) == expected


# --- the offline stand-in ---------------------------------------------------------------------

def test_offline_judge_says_it_is_a_stand_in():
    assert "stand-in" in judge_module.__doc__ and "must not be reported" in judge_module.__doc__
    assert repr(build_judge({"backend": "offline"})) == "Judge(offline)"
    with pytest.raises(ValueError, match="takes no options"):
        build_judge({"backend": "offline", "model": "x"})


def test_offline_empathy_orders_generic_coarse_specific():
    judge = Judge()
    outputs = {
        "template": "I understand how you feel. I'm here for you. Don't worry, everything will be okay.",
        "wrong emotion": "You sound so happy about it, what a joyful moment for you!",
        "right, not anchored": "I can hear how angry you are, and you have every right to be furious.",
        "right, anchored": "You are angry that the project ended this way after everything you put into it; "
                           "you deserved a say in how it would end.",
        "anchored but padded": "You are angry that the project ended this way after everything you put into it. "
                               "I'm here for you.",
        "ramble": "You are angry that the project ended like this. " + "It went on and on. " * 60,
    }
    got = {k: s["empathy"] for k, s in zip(outputs, judge.score([item(o) for o in outputs.values()], "empathy"))}
    assert got == {"template": 1, "wrong emotion": 2, "right, not anchored": 3, "right, anchored": 4,
                   "anchored but padded": 3, "ramble": 3}
    # Prompt A: the response is judged; the thought may carry the recognised emotion.
    tagged = "<thought>Emotion perception: the user is angry.</thought><response>That was unfair of them.</response>"
    assert judge.score([item(tagged)], "empathy") == [{"empathy": 3.0}]
    # Deterministic: the same items give the same scores.
    assert judge.score([item(o) for o in outputs.values()], "empathy") == \
        Judge().score([item(o) for o in outputs.values()], "empathy")


def test_generic_fraction_counts_stock_sentences():
    assert generic_fraction("I understand how you feel. Take care.") == 1.0
    assert generic_fraction("I'm sorry to hear that. Losing the project after two years is brutal.") == 0.5
    assert generic_fraction("别担心，一切都会好起来的。") == 1.0
    assert generic_fraction("") == 1.0


def test_offline_eips_scores_each_step():
    judge = Judge()
    target = offline_target("eips")
    good = judge.score([item(target)], "eips")[0]
    assert set(good) == {"perception", "intent", "psychology", "strategy"}
    assert good["perception"] == 4 and min(good.values()) >= 3

    thought = ("Emotion perception: The user sounds sad, quietly mourning the project that ended like this. "
               "Intent: The user wants someone to acknowledge how much the project meant to them. "
               "Psychological modelling: They may blame themselves and withdraw if told to move on quickly. "
               "Strategy: Acknowledge the loss of the project gently and ask what it meant to them.")
    wrong = judge.score([item(f"<thought>{thought}</thought><response>The project meant a lot to you.</response>")],
                        "eips")[0]
    assert wrong == {"perception": 1, "intent": 2, "psychology": 2, "strategy": 2}  # reasons from the wrong emotion
    right = judge.score([item(f"<thought>{thought}</thought><response>The project meant a lot to you.</response>",
                              label="sadness")], "eips")[0]
    assert right == {"perception": 4, "intent": 4, "psychology": 4, "strategy": 4}

    missing = "<thought>Emotion perception: The user is angry about how the project ended so abruptly. " \
              "Strategy: ok.</thought><response>That ending was unfair.</response>"
    scores = judge.score([item(missing)], "eips")[0]
    assert scores["intent"] == scores["psychology"] == 1 and scores["strategy"] == 1 and scores["perception"] == 4
    # No well-formed <thought>/<response>: every step at the floor (no thought: not even looked at).
    assert judge.score([item(thought), item("<thought>x</thought>")], "eips") == [
        {k: 1.0 for k in good}] * 2
    assert eips_steps("Emotion Perception: a. Intent Extraction: b. Psychological Modeling: c. "
                      "Strategy Formulation: d.") == {"perception": "a.", "intent": "b.", "psychology": "c.",
                                                      "strategy": "d."}


def test_offline_emotion_and_binary_use_the_label_rules():
    judge = Judge()
    outputs = ["The speaker sounds angry.", "The speaker is not angry; the emotion is sadness.",
               "Hard to say.", offline_target("c2ser_implicit")]
    assert [s["correct"] for s in judge.score([item(o) for o in outputs], "emotion")] == [1, 0, 0, 1]
    binary = judge.score([item("The speaker sounds furious and angry.", reference="The speaker is angry."),
                          item("The speaker is happy.", reference="The speaker is angry."),
                          item("The train leaves at nine from platform two.", label="",
                               reference="It leaves at nine from platform two."),
                          item("It leaves tomorrow.", label="", reference="It leaves at nine from platform two.")],
                         "binary")
    assert [s["correct"] for s in binary] == [1, 0, 1, 0]


def test_quotation_and_offline_groundedness():
    assert extract_quotes('He said "end like this" and “the project” and "end like this".') == \
        ["end like this", "the project"]
    assert quotation('The phrase "the project would end like this" shows anger.', TEXT) == \
        {"quotation": 1.0, "coverage": 6 / 9}
    assert quotation("No quotes here, the speaker is angry.", TEXT) == {"quotation": 0.0, "coverage": 0.0}

    judge = Judge()
    outputs = ['The emotion is anger: "I never imagined the project would end like this."',   # verbatim
               'The speaker is angry: "I never imagined the job would end this way."',          # loose
               'The speaker is angry: "You ruined everything, again!"',                        # hallucinated
               'The speaker is sad: "the project would end like this"',                        # wrong emotion
               "The speaker is angry about the project."]                                      # no quote
    scores = judge.score([item(o) for o in outputs], "grounded")
    assert scores[0] == {"groundedness": 2, "relevance": 2, "quotation": 1, "coverage": 1.0}
    assert scores[1]["groundedness"] == 1 and scores[1]["relevance"] == 1 and scores[1]["coverage"] == 0
    assert scores[2]["groundedness"] == 0 and scores[2]["relevance"] == 0
    assert scores[3]["groundedness"] == 2 and scores[3]["relevance"] == 0
    assert scores[4] == {"quotation": 0.0, "coverage": 0.0}   # not judged: Table 4 judges quoted outputs
    assert judge.stats == Counter(items=5, scored=5, floor=1)
    assert normalise(scores[1], "grounded") == {"groundedness": 0.5, "relevance": 0.5, "quotation": 1.0,
                                                "coverage": 0.0}


def test_chinese_quotes_are_matched_character_by_character():
    text = "我从没想到，这个项目会这样结束。"
    scores = Judge().score([item('说话人很生气："这个项目会这样结束"', text=text)], "grounded")[0]
    assert scores == {"groundedness": 2, "relevance": 2, "quotation": 1, "coverage": 9 / 14}


# --- parsing replies -----------------------------------------------------------------------------

@pytest.mark.parametrize("rubric,reply,expected", [
    ("empathy", '```json\n{"score": 3, "reasoning": "Score: 4 would need more."}\n```', {"empathy": 3}),
    ("empathy", '{"score": "4", "reasoning": "deep"}', {"empathy": 4}),
    ("empathy", "Score: 2", {"empathy": 2}),
    ("emotion", "Explanation: The ground truth is anger, while the model concludes anger.\nRating: 1",
     {"correct": 1}),
    ("binary", "Explanation: wrong.\n**Rating:** 0", {"correct": 0}),
    ("binary", "Rating : 1", {"correct": 1}),
    ("grounded", "Ground Truth Emotion: anger\nExtracted Quotations from Model Prediction: [\"x\"]\n"
                 "Groundedness Score: 2\nRelevance Score: 1\nExplanation: the quote is exact.", 
     {"groundedness": 2, "relevance": 1}),
    ("eips", '{"emotion_perception": 4, "intent_extraction": 3, "psychological_modeling": 2, '
             '"strategy_formulation": 1, "reasoning": "ok"}',
     {"perception": 4, "intent": 3, "psychology": 2, "strategy": 1}),
    ("eips", "Emotion perception: 4\nIntent: 3\nPsychological modelling: 2\nStrategy: 4",
     {"perception": 4, "intent": 3, "psychology": 2, "strategy": 4}),
])
def test_rubric_parses_replies(rubric, reply, expected):
    assert RUBRICS[rubric].parse(reply) == expected


@pytest.mark.parametrize("rubric,reply,why", [
    ("empathy", '{"score": 5}', "empathy 5 is not an integer in 1-4"),
    ("empathy", "Score: 0", "empathy 0 is not an integer in 1-4"),
    ("empathy", "Score: 2.5", "empathy 2.5 is not an integer"),
    ("empathy", "I would give it a three.", "no empathy score"),
    ("binary", "Rating: 1\nOn reflection, Rating: 0", "correct given as 0 and 1"),
    ("grounded", "Groundedness Score: 2", "no relevance score"),
    ("eips", '{"emotion_perception": 4, "intent_extraction": 3}', "no psychology score"),
])
def test_rubric_rejects_unreadable_replies(rubric, reply, why):
    with pytest.raises(ValueError, match=why):
        RUBRICS[rubric].parse(reply)


# --- model backends: a scripted teacher, the HTTP endpoint, hf ------------------------------------

class RaisingTeacher(Teacher):
    name = "broken"

    def generate(self, requests):
        raise RuntimeError("CUDA out of memory")


def test_a_backend_that_raises_drops_the_batch_not_the_stage(caplog):
    judge = Judge(RaisingTeacher())
    scores = judge.score([item("You are angry.", utt="spk1-a"), item("", utt="spk1-b")], "empathy")
    assert scores == [None, {"empathy": 1.0}]
    assert judge.stats == Counter(items=2, scored=1, floor=1, failed=1)
    assert "RuntimeError" in caplog.text and "spk1-a" in caplog.text


def test_unknown_rubric_is_an_error():
    with pytest.raises(ValueError, match="unknown rubric 'kindness'"):
        Judge().score([item("x")], "kindness")


def marker(body: dict) -> str:
    """Which scripted case a request is: the word after 'case-' in its first message (a grounded
    prompt holds the quotes, not the output: any one of them is the case 'grounded')."""
    first = body["messages"][0]["content"]
    if "[Extracted Quotes from Model Prediction]" in first:
        return "grounded"
    return first.split("case-", 1)[1].split()[0].strip('"().,:') if "case-" in first else "?"


@pytest.fixture
def judge_server():
    counts: Counter = Counter()

    def respond(body):
        case = marker(body)
        counts[case] += 1
        repair = len(body["messages"]) == 3
        if case == "good":
            return 200, chat_answer('```json\n{"score": 3, "reasoning": "names the anger"}\n```')
        if case == "flaky":
            return (500, "overloaded") if counts[case] == 1 else (200, chat_answer('{"score": 4, "reasoning": ""}'))
        if case == "fixable":  # out of range first; the follow-up turn gets a valid score
            return 200, chat_answer('{"score": 2}' if repair else "Score: 7")
        if case == "babble":
            return 200, chat_answer("I would rather not put a number on empathy.")
        if case == "html":
            return 200, "<html>bad gateway</html>"
        if case == "down":
            return 503, "unavailable"
        if case == "grounded":
            return 200, chat_answer("Ground Truth Emotion: anger\nGroundedness Score: 2\nRelevance Score: 1\n"
                                    "Explanation: exact quote, loosely angry.")
        if case == "eips":
            return 200, chat_answer('{"emotion_perception": 4, "intent_extraction": 3, '
                                    '"psychological_modeling": 2, "strategy_formulation": 4, "reasoning": "."}')
        return 400, "unexpected"

    server = ChatServer(respond)
    server.counts = counts
    yield server
    server.close()


def http_judge(server, cache, retries=1):
    return Judge(CachedTeacher(OpenAITeacher(server.url, "judge-model", api_key_env="EMOREASON_JUDGE_KEY",
                                             timeout=5, max_retries=1, backoff=0.01, workers=3), cache),
                 retries=retries)


def test_openai_judge_retries_drops_counts_and_never_leaks_the_key(judge_server, tmp_path, monkeypatch, caplog):
    """The stage-8 must-show: failures and unreadable scores mid-RL are retried or dropped, and counted."""
    monkeypatch.setenv("EMOREASON_JUDGE_KEY", SECRET)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache" / "judge.sqlite"
    cases = ["good", "flaky", "fixable", "babble", "html", "down"]
    items = [item(f"I can hear you are angry (case-{c}).", utt=f"spk1-{c}") for c in cases]
    items.append(item("<thought>Emotion perception: anger.</thought><response></response>", utt="spk1-empty"))

    judge = http_judge(judge_server, cache)
    scores = judge.score(items, "empathy")
    assert scores == [{"empathy": 3.0}, {"empathy": 4.0}, {"empathy": 2.0}, None, None, None, {"empathy": 1.0}]
    assert judge.stats == Counter(items=7, scored=4, floor=1, failed=2, unparseable=1, reasked=2)
    assert judge_server.counts == {"good": 1, "flaky": 2, "fixable": 2, "babble": 2, "html": 2, "down": 2}
    repair = [b["messages"] for b in judge_server.bodies if marker(b) == "fixable" and len(b["messages"]) == 3][0]
    assert repair[1] == {"role": "assistant", "content": "Score: 7"}
    assert "empathy 7 is not an integer in 1-4" in repair[2]["content"]
    assert "7 items, 4 scored (1 at the floor), 2 failed, 1 unparseable, 2 re-asked" in caplog.text
    for utt in ("spk1-babble", "spk1-html", "spk1-down"):
        assert any(utt in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records), utt

    # A re-run pays only for what failed: good answers and read replies come from the cache.
    before = Counter(judge_server.counts)
    again = http_judge(judge_server, cache)
    assert again.score(items, "empathy") == scores
    assert judge_server.counts - before == {"html": 2, "down": 2}
    again.teacher.close()
    judge.teacher.close()

    assert set(judge_server.auth) == {f"Bearer {SECRET}"}
    assert SECRET not in caplog.text and SECRET not in repr(judge) and SECRET not in repr(again)
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in cache.parent.iterdir())
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 6  # good, flaky, 2 fixable, 2 babble


def test_openai_judge_grounded_and_eips(judge_server, tmp_path, monkeypatch):
    monkeypatch.delenv("EMOREASON_JUDGE_KEY", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    judge = http_judge(judge_server, tmp_path / "judge.sqlite")
    grounded = judge.score([item('The speaker is angry: "the project would end like this"'),
                            item("The speaker is angry, no quote.")], "grounded")
    assert grounded == [{"groundedness": 2, "relevance": 1, "quotation": 1, "coverage": 6 / 9},
                        {"quotation": 0.0, "coverage": 0.0}]
    assert judge_server.counts == {"grounded": 1}       # the unquoted output was not sent
    prompt = judge_server.bodies[0]["messages"][0]["content"]
    assert f"[Ground Truth Transcript]\n{TEXT}" in prompt
    assert '[Extracted Quotes from Model Prediction]\n["the project would end like this"]' in prompt

    output = ("<thought>Emotion perception: anger (case-eips). Intent: x. Psychological modelling: y. "
              "Strategy: z.</thought><response>That was unfair.</response>")
    eips = judge.score([item(output)], "eips")[0]
    assert eips == {"perception": 4, "intent": 3, "psychology": 2, "strategy": 4}
    assert normalise(eips, "eips") == {"perception": 1.0, "intent": 2 / 3, "psychology": 1 / 3, "strategy": 1.0}
    sent = judge_server.bodies[-1]["messages"][0]["content"]
    assert 'Model response: "That was unfair."' in sent and "Strategy: z." in sent and "<thought>" not in sent
    judge.teacher.close()


def test_judge_config_group(judge_server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(compose().judge) == {"backend": "offline"}
    cfg = compose(["judge=openai", f"judge.base_url={judge_server.url}", f"exp_root={tmp_path}",
                   "judge.max_retries=0", "judge.retries=2"])
    judge = build_judge(OmegaConf.to_container(cfg.judge, resolve=True))
    assert isinstance(judge.teacher, CachedTeacher) and isinstance(judge.teacher.inner, OpenAITeacher)
    assert judge.teacher.path == tmp_path / "cache" / "judge_openai.sqlite" and judge.retries == 2
    assert judge.score([item("angry (case-good)")], "empathy") == [{"empathy": 3.0}]
    judge.teacher.close()
    hf = compose(["judge=hf", f"exp_root={tmp_path}"]).judge
    assert hf.backend == "hf" and hf.cache == f"{tmp_path}/cache/judge_hf.sqlite"


@pytest.fixture(scope="module")
def rating_lm(tmp_path_factory):
    """A tiny Llama that answers every prompt "Rating : 1"."""
    return scripted_lm(tmp_path_factory.mktemp("rating_lm"), {"Rating": ":", ":": "1", "1": "<eos>"}, "Rating")


def test_hf_judge_reads_a_reply_and_drops_an_unreadable_one(rating_lm, tmp_path, caplog):
    teacher = HFTeacher(str(rating_lm), max_new_tokens=8, batch_size=2, device="cpu")
    judge = Judge(CachedTeacher(teacher, tmp_path / "judge_hf.sqlite"), retries=1)
    items = [item("The speaker is angry.", utt="spk1-a"),
             item("The speaker sounds angry and loud.", utt="spk1-b", reference="The speaker is angry.")]
    assert judge.score(items, "binary") == [{"correct": 1.0}, {"correct": 1.0}]
    # The same model cannot answer the empathy rubric's JSON: re-asked once, then dropped, no exception.
    assert judge.score(items[:1], "empathy") == [None]
    assert judge.stats == Counter(items=3, scored=2, unparseable=1, reasked=1)
    assert "spk1-a: judge hf:" in caplog.text and "no empathy score" in caplog.text
    judge.teacher.close()
