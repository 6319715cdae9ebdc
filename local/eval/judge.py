"""Judges: scores of a model's free-text output by the rubrics of the papers, behind one interface.

``Judge.score(items, rubric) -> list[Score | None]`` is all a stage sees (stage 8's
DR-SAPO rewards, stage 10's tables); the backend is a config choice
(``conf/judge/*.yaml``), as for the teacher:

* ``offline``: deterministic rules, no model.  **A stand-in, not a judge**: it
  checks what can be checked mechanically (the gold label named, the
  ``<thought>``/``<response>`` format, quotations of the transcript, stock
  empathy phrases, length, words shared with a reference answer) and maps
  that onto each rubric's scale.  It cannot
  tell deep insight from a plausible sentence; its numbers let the pipeline
  and its tests run anywhere and must not be reported as judge scores.
* ``hf`` / ``openai``: a language model reads the rubric prompt
  (``local/reasoning/prompts/judge_*.txt``) through the teacher backends of
  :mod:`local.reasoning.teacher` (same retries, secret handling and sqlite
  answer cache); its reply is parsed, and a reply that cannot be read is
  re-asked with a follow-up turn saying what was wrong.

Rubrics (scores are the paper's integer scales; :func:`normalise` maps them to [0, 1]):

=========  ==========================================================  ===========================
rubric     scores                                                      source
=========  ==========================================================  ===========================
empathy    ``empathy`` 1-4                                             CogAudio §4, R_emp of Eq. 3
eips       ``perception``, ``intent``, ``psychology``, ``strategy``    CogAudio Eq. 4 (R_cot,k),
           1-4 each (the empathy scale, so both rewards share one      reconstructed
           calibration)
emotion    ``correct`` 0/1: the concluded emotion is the gold label    C²SER §V-B2, reconstructed
grounded   ``groundedness`` 0-2, ``relevance`` 0-2 (judged), plus      AudioLLM-Reasoning Fig. 5,
           ``quotation`` 0/1 and ``coverage`` in [0, 1] (computed)     Table 4
binary     ``correct`` 0/1 against a reference answer                  AudioBench's binary judge
sqa        ``sqa`` 0-5: the answer to a question on the speech's       AudioLLM-Reasoning §4.3,
           content against the reference answer                        AudioBench's 0-5 judge
=========  ==========================================================  ===========================

``quotation`` is 1 when the output holds at least one double-quoted span; its
mean over a test set is AudioLLM-Reasoning's Table 4 "Quotation Score".
``coverage`` is the fraction of the transcript's words that the output quotes
verbatim.  Groundedness and relevance are judged only for outputs that quote
something: Table 4's groundedness (82.8) exceeds its quotation rate (57.5), so
unquoted outputs cannot have counted as 0; an unquoted output's score holds
the two computed keys only.

AudioBench reports the 0-5 judge as mean x 20, a 0-100 score: :func:`normalise`
x 100, as for every rubric (Table 4's groundedness 0-2 is mean x 50).  Items
with a closed label set other than the emotions (sentiment) carry it in
``JudgeItem.labels``, and the rules read their outputs for those labels.

Likewise an output with nothing to judge (an empty response for ``empathy``,
no ``<thought>`` for ``eips``, an empty output for ``emotion`` / ``binary`` / ``sqa``)
gets the rubric's floor without asking anyone, under every backend.

Fault tolerance (stage 8 must survive its judge): a failed request (the
backend gave up after its own retries, or raised) or a reply still unreadable
after ``retries`` follow-ups gives ``None`` for that item; ``score`` never
raises on a bad reply.  The caller drops those samples; ``Judge.stats``
counts them and every call logs a summary line.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from local.data.labels import EMOTIONS
from local.eval.extract import extract_label
from local.eval.judge_text import (content_tokens, extract_quotes, find_span, format_reward, generic_fraction,
                                   quotation, split_eips, tokens)
from local.reasoning.prompts import load_questions, render
from local.reasoning.targets import names_label
from local.reasoning.teacher import Request, Teacher, build_teacher

log = logging.getLogger(__name__)

Score = dict[str, float]


@dataclass
class JudgeItem:
    """One output to judge and what the rubrics compare it with."""

    utt: str                 # names the item in logs and in the request key
    output: str              # the model's output, as generated (tags included)
    label: str = ""          # gold emotion (utt2emo)
    text: str = ""           # transcript
    reference: str = ""      # reference answer for ``binary`` / ``sqa`` (default: the gold label)
    question: str = ""       # the question the model answered, for ``binary`` / ``sqa``
    labels: tuple[str, ...] = ()  # the closed set ``label`` is one of (sentiment ...); () = the emotions

    def read_label(self, text: str) -> str | None:
        """The label of the item's set that ``text`` concludes with: a sentiment item is read for
        positive / negative / neutral, not for emotion words."""
        return extract_label(text, self.labels or EMOTIONS)



# --- the offline stand-in: one rule set per rubric --------------------------------------------

MAX_RESPONSE_WORDS = 150   # longer than any spoken reply: a ramble, not a response
MIN_STEP_WORDS = 6         # an EIPS step shorter than this says nothing specific
NEED_WORDS = re.compile(r"\b(?:wants?|needs?|hopes?|wish(?:es)?|longs?|seeks?|desires?|to be|to have|to feel)\b"
                        r"|需要|希望|想要|渴望", re.IGNORECASE)
MIND_WORDS = re.compile(r"\b(?:feel\w*|expect\w*|defen[cs]\w*|resist\w*|bias\w*|assum\w*|reassur\w*|trust\w*|"
                        r"blam\w*|withdraw\w*|landing|catastrophi\w*|self-\w+|cogniti\w*)\b"
                        r"|防御|期待|感受|认知|安全感|自责", re.IGNORECASE)
EIPS_HEADINGS = {
    "perception": r"emotion(?:al)?\s+perception",
    "intent": r"intent(?:ion)?(?:\s+extraction)?",
    "psychology": r"psychological\s+model(?:l)?ing",
    "strategy": r"strategy(?:\s+formulation)?",
}
_HEADING = re.compile("(?:" + "|".join(f"(?P<{k}>{v})" for k, v in EIPS_HEADINGS.items()) + r")\s*[:：]",
                      re.IGNORECASE)


def eips_steps(thought: str) -> dict[str, str]:
    """The text of each EIPS step of a thought, by its ``Heading:``; a step missing is absent."""
    marks = [(m.start(), m.end(), m.lastgroup) for m in _HEADING.finditer(thought)]
    steps: dict[str, str] = {}
    for (_, end, name), nxt in zip(marks, marks[1:] + [(len(thought), 0, "")]):
        steps.setdefault(name, thought[end:nxt[0]].strip())
    return steps


def _named_right(text: str, label: str) -> bool | None:
    """True when the text concludes with ``label``, False with another label, None with none."""
    found = extract_label(text)
    return None if found is None else found == label


def offline_empathy(item: JudgeItem) -> Score:
    """1 mostly (over half) stock or too short; 2 the gold emotion not recognised (or another one named);
    3 recognised but not anchored in what the user said, or padded with stock phrases;
    4 recognised, anchored in the user's words, free of stock phrases.  Over-long: at most 3."""
    _, response = split_eips(item.output)
    n = len(tokens(response))
    if n < 4 or generic_fraction(response) > 0.5:
        score = 1
    elif _named_right(response, item.label) is False or not (
            names_label(response, item.label) or _named_right(item.output, item.label)):
        score = 2
    elif not content_tokens(response) & content_tokens(item.text) or generic_fraction(response) > 0:
        score = 3
    else:
        score = 4
    if n > MAX_RESPONSE_WORDS:
        score = min(score, 3)
    return {"empathy": float(score)}


def offline_eips(item: JudgeItem) -> Score:
    """Per step: 1 missing, malformed output or wrong emotion; 2 present but short or stock;
    3 substantive; 4 substantive and anchored (perception names the gold label, intent states
    a need, psychology models the user's mind, strategy shares words with the response).
    A wrongly perceived emotion caps the later steps at 2: they reason from it."""
    if not format_reward(item.output):
        return {k: 1.0 for k in EIPS_HEADINGS}
    thought, response = split_eips(item.output)
    steps = eips_steps(thought)
    anchored = {
        "perception": lambda s: _named_right(s, item.label) is True,
        "intent": lambda s: bool(NEED_WORDS.search(s)),
        "psychology": lambda s: bool(MIND_WORDS.search(s)),
        "strategy": lambda s: bool(content_tokens(s) & content_tokens(response)),
    }
    scores: Score = {}
    for name, rule in anchored.items():
        step = steps.get(name, "")
        if len(tokens(step)) < 3:
            scores[name] = 1.0
        elif len(tokens(step)) < MIN_STEP_WORDS or generic_fraction(step) > 0.5:
            scores[name] = 2.0
        else:
            scores[name] = 4.0 if rule(step) else 3.0
    if _named_right(steps.get("perception", ""), item.label) is False:
        scores = {k: 1.0 if k == "perception" else min(v, 2.0) for k, v in scores.items()}
    return scores


def offline_emotion(item: JudgeItem) -> Score:
    """1 iff the output's concluded label (local.eval.extract rules) is the gold label."""
    return {"correct": float(item.read_label(item.output) == item.label)}


def offline_grounded(item: JudgeItem) -> Score:
    """Groundedness 2 every quote verbatim in the transcript, 1 some quote at least half made of
    transcript words, else 0.  Relevance: the stand-in cannot read what a quote implies, so it
    asks whether the output quoting it concludes the gold label: 0 if not (or nothing grounded),
    2 with verbatim quotes, else 1."""
    words, vocab = tokens(item.text), set(tokens(item.text))
    quotes = [tokens(q) for q in extract_quotes(item.output)]
    verbatim = [bool(q) and find_span(words, q) >= 0 for q in quotes]
    partial = [bool(q) and sum(w in vocab for w in q) / len(q) >= 0.5 for q in quotes]
    grounded = 2 if all(verbatim) else 1 if any(partial) else 0
    right = item.read_label(item.output) == item.label
    relevance = 0 if not right or grounded == 0 else 2 if grounded == 2 else 1
    return {"groundedness": float(grounded), "relevance": float(relevance)}


def offline_binary(item: JudgeItem) -> Score:
    """With a reference that states an emotion: the labels agree.  Otherwise: the output holds
    at least half of the reference's content words."""
    reference = item.reference or item.label
    wanted = item.read_label(reference)
    if wanted is not None:
        return {"correct": float(item.read_label(item.output) == wanted)}
    ref = content_tokens(reference)
    return {"correct": float(bool(ref) and len(ref & content_tokens(item.output)) / len(ref) >= 0.5)}


ARTICLES = frozenset(("a", "an", "the"))


def overlap_f1(answer: str, reference: str) -> float:
    """Token-overlap F1 of an answer against a reference (SQuAD's answer F1: counted tokens, articles
    dropped), with Chinese characters as tokens; 0.0 when either side has no token."""
    a = Counter(t for t in tokens(answer) if t not in ARTICLES)
    r = Counter(t for t in tokens(reference) if t not in ARTICLES)
    common = sum((a & r).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def offline_sqa(item: JudgeItem) -> Score:
    """A rule STAND-IN for the 0-5 SQA judge, not a judge: 5 x the answer's token-overlap F1 with the
    reference answer, rounded half up.  It rewards shared words, so a right paraphrase scores low and
    a wrong answer that repeats the reference's words scores high; its numbers only let the pipeline run."""
    return {"sqa": float(int(5 * overlap_f1(item.output, item.reference) + 0.5))}


# --- rubrics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rubric:
    """A prompt file, the scores its reply must hold, their integer range, and the offline rule."""

    prompt: str                                  # prompts/<prompt>.txt
    keys: dict[str, tuple[str, ...]]             # score name -> how a reply may call it (JSON key or label)
    low: int
    high: int
    needs: str                                   # the part of the item that must be non-empty to judge
    offline: Callable[[JudgeItem], Score]
    floor: bool = True                           # nothing to judge -> every key at ``low`` (else no key)

    def parse(self, reply: str) -> Score:
        """The scores of a judge's reply; ValueError (saying why) when one is missing, ambiguous,
        not an integer or out of range.  A JSON object holding every key wins; otherwise
        ``<name>: <n>`` lines, where two different values for one name are ambiguous."""
        raw = _from_json(reply, self.keys) or _from_lines(reply, self.keys)
        for name, value in raw.items():
            if not float(value).is_integer() or not self.low <= value <= self.high:
                raise ValueError(f"{name} {value:g} is not an integer in {self.low}-{self.high}")
        return {k: float(v) for k, v in raw.items()}


def _norm_key(key: str) -> str:
    return re.sub(r"[\s_*-]+", " ", key.strip().lower())


def _from_json(reply: str, keys: Mapping[str, tuple[str, ...]]) -> dict[str, float] | None:
    for blob in reversed(re.findall(r"\{[^{}]*\}", reply)):
        try:
            obj = json.loads(blob)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        found = {_norm_key(k): v for k, v in obj.items()}
        out: dict[str, float] = {}
        for name, aliases in keys.items():
            value = next((found[a] for a in aliases if a in found), None)
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                break
        else:
            return out
    return None


def _from_lines(reply: str, keys: Mapping[str, tuple[str, ...]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, aliases in keys.items():
        names = "|".join(r"[\s_]+".join(map(re.escape, a.split())) for a in aliases)
        pattern = rf"(?<![\w])(?:{names})(?:[\s_]+score)?[\s\"'*]*[:=][\s\"'*]*(-?\d+(?:\.\d+)?)"
        values = {float(v) for v in re.findall(pattern, reply, re.IGNORECASE)}
        if not values:
            raise ValueError(f"no {name} score")
        if len(values) > 1:
            raise ValueError(f"{name} given as {' and '.join(f'{v:g}' for v in sorted(values))}")
        out[name] = values.pop()
    return out


RUBRICS: dict[str, Rubric] = {
    "empathy": Rubric("judge_empathy", {"empathy": ("score", "empathy")}, 1, 4, "response", offline_empathy),
    "eips": Rubric("judge_eips", {
        "perception": ("emotion perception", "perception"),
        "intent": ("intent extraction", "intent"),
        "psychology": ("psychological modeling", "psychological modelling", "psychology"),
        "strategy": ("strategy formulation", "strategy"),
    }, 1, 4, "thought", offline_eips),
    "emotion": Rubric("judge_emotion", {"correct": ("rating",)}, 0, 1, "output", offline_emotion),
    "grounded": Rubric("judge_grounded", {"groundedness": ("groundedness",), "relevance": ("relevance",)},
                       0, 2, "quotes", offline_grounded, floor=False),
    "binary": Rubric("judge_binary", {"correct": ("rating",)}, 0, 1, "output", offline_binary),
    "sqa": Rubric("judge_sqa", {"sqa": ("rating", "score")}, 0, 5, "output", offline_sqa),
}


def normalise(score: Score, rubric: str) -> dict[str, float]:
    """Scores rescaled to [0, 1] (what a reward wants): judged keys by the rubric's range,
    computed keys (quotation, coverage) as they are."""
    spec = RUBRICS[rubric]
    return {k: (v - spec.low) / (spec.high - spec.low) if k in spec.keys else v for k, v in score.items()}


def _fields(item: JudgeItem) -> dict[str, Any]:
    """What the rubric prompts' slots are filled with."""
    thought, response = split_eips(item.output)
    return {"text": item.text, "label": item.label, "output": item.output.strip(), "thought": thought,
            "response": response, "quotes": extract_quotes(item.output),
            "reference": item.reference or item.label,
            "question": item.question or load_questions()["emotion"][0]}


# --- the judge -----------------------------------------------------------------------------------

@dataclass
class _Pending:
    index: int
    request: Request
    extra: Score = field(default_factory=dict)


class Judge:
    """Scores outputs by a rubric, with a model (any teacher backend) or the offline stand-in.

    ``retries`` is how many times an unreadable reply is re-asked (a follow-up turn naming
    the problem: a greedy judge asked the same prompt again would answer the same).
    """

    def __init__(self, teacher: Teacher | None = None, retries: int = 1):
        self.teacher, self.retries = teacher, int(retries)
        self.name = teacher.name if teacher is not None else "offline"
        self.stats: Counter = Counter()

    def __repr__(self) -> str:
        return f"Judge({self.teacher!r}, retries={self.retries})" if self.teacher else "Judge(offline)"

    def close(self) -> None:
        """Close the backend's request cache, if it has one."""
        if self.teacher is not None and hasattr(self.teacher, "close"):
            self.teacher.close()

    def score(self, items: Sequence[JudgeItem], rubric: str) -> list[Score | None]:
        """One score per item, ``None`` where the judge failed or stayed unreadable (drop it)."""
        if rubric not in RUBRICS:
            raise ValueError(f"unknown rubric '{rubric}' (known: {', '.join(RUBRICS)})")
        spec, before = RUBRICS[rubric], Counter(self.stats)
        scores: list[Score | None] = [None] * len(items)
        pending: list[_Pending] = []
        for i, item in enumerate(items):
            fields = _fields(item)
            extra = quotation(item.output, item.text) if rubric == "grounded" else {}
            if not fields[spec.needs]:
                scores[i] = {**({k: float(spec.low) for k in spec.keys} if spec.floor else {}), **extra}
                self.stats["floor"] += 1
            elif self.teacher is None:
                scores[i] = {**spec.offline(item), **extra}
            else:
                fields["quotes"] = json.dumps(fields["quotes"], ensure_ascii=False)
                request = Request(key=f"{item.utt} judge_{rubric}", type=f"judge_{rubric}",
                                  prompt=render(spec.prompt, **fields), utt=item.utt, label=item.label,
                                  text=item.text)
                pending.append(_Pending(i, request, extra))
        for attempt in range(self.retries + 1):
            if not pending:
                break
            pending = self._ask(pending, spec, rubric, scores, last=attempt == self.retries)
        self.stats["items"] += len(items)
        self.stats["scored"] += sum(s is not None for s in scores)
        self._summary(rubric, self.stats - before)
        return scores

    def _ask(self, pending: list[_Pending], spec: Rubric, rubric: str, scores: list[Score | None],
             last: bool) -> list[_Pending]:
        """One round of requests; returns the follow-ups for the replies that could not be read."""
        answers = self._generate([p.request for p in pending])
        again: list[_Pending] = []
        for p, answer in zip(pending, answers):
            utt = p.request.utt
            if answer is None:
                self.stats["failed"] += 1
                log.warning("%s: judge %s gave no answer for rubric '%s': sample dropped", utt, self.name, rubric)
                continue
            try:
                scores[p.index] = {**spec.parse(answer), **p.extra}
            except ValueError as e:
                if last:
                    self.stats["unparseable"] += 1
                    log.warning("%s: judge %s reply for rubric '%s' unreadable after %d attempt(s) (%s): "
                                "sample dropped", utt, self.name, rubric, self.retries + 1, e)
                    continue
                self.stats["reasked"] += 1
                log.info("%s: judge %s reply for rubric '%s' unreadable (%s): asking again", utt, self.name,
                         rubric, e)
                chat = p.request.chat() + [{"role": "assistant", "content": answer},
                                           {"role": "user", "content": render("judge_repair", error=str(e))}]
                request = Request(key=f"{p.request.key} repair", type=p.request.type, messages=chat,
                                  utt=utt, label=p.request.label, text=p.request.text)
                again.append(_Pending(p.index, request, p.extra))
        return again

    def _generate(self, requests: list[Request]) -> list[str | None]:
        """The backend's answers; a backend that raises fails its whole batch instead of the stage."""
        try:
            answers = self.teacher.generate(requests)
        except Exception as e:  # noqa: BLE001 - an endpoint or a GPU failing mid-RL must not kill it
            utts = ", ".join(r.utt for r in requests[:3]) + (" ..." if len(requests) > 3 else "")
            log.error("judge %s raised %s on a batch of %d (%s): %s", self.name, type(e).__name__, len(requests),
                      utts, str(e)[:200])
            return [None] * len(requests)
        if len(answers) != len(requests):
            raise RuntimeError(f"judge {self.name} returned {len(answers)} answers for {len(requests)} requests")
        return answers

    def _summary(self, rubric: str, delta: Counter) -> None:
        bad = delta["failed"] + delta["unparseable"]
        (log.warning if bad else log.info)(
            "judge %s [%s]: %d items, %d scored (%d at the floor), %d failed, %d unparseable, %d re-asked",
            self.name, rubric, delta["items"], delta["scored"], delta["floor"], delta["failed"],
            delta["unparseable"], delta["reasked"])


def build_judge(cfg: Mapping[str, Any]) -> Judge:
    """The judge a ``conf/judge/*.yaml`` describes: ``offline``, or a (cached) teacher backend."""
    options = dict(cfg)
    retries = int(options.pop("retries", 1))
    if options.get("backend") == "offline":
        unused = sorted(set(options) - {"backend"})
        if unused:
            raise ValueError(f"the offline judge takes no options, got {unused}")
        return Judge(None)
    return Judge(build_teacher(options), retries=retries)
