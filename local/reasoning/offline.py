"""The offline teacher: deterministic template fill-ins, NOT a language model.

This is an honest stand-in.  It writes each target type in the format a real
teacher is asked for (C²SER descriptions, EIPS ``<thought>``/``<response>``,
ambiguity steps with a ``Distribution:`` line, summarize / elaborate
explanations of an emotion or, for the SR types, a sentiment) from the structured fields of a request: gold label, transcript,
attribute levels, soft label.  The reasoning is therefore correct by
construction and shallow by construction; it exists so that every later stage
runs, and is tested, on a machine with no model and no network.  Real runs use
the ``hf`` or ``openai`` teacher.

Several phrasings exist per target type; which one an utterance gets depends
on a sha256 of its id (never Python's ``hash()``, which changes per process),
so re-runs are identical and a corpus still sees varied wording.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any, Callable, Sequence

from local.reasoning.checks import format_dist_line
from local.reasoning.targets import TARGET_TYPES
from local.reasoning.tasks import task_spec
from local.reasoning.teacher import Request, Teacher

log = logging.getLogger(__name__)

# Bump when any template below changes: it is part of the cache identity.
VERSION = 1


# Per-label wording.  situation completes "something that ...", intent
# completes "wants ...", cue names the prosody usually heard with the label.
LEXICON: dict[str, dict[str, Any]] = {
    "anger": dict(
        situation="crossed a line for them",
        cue=["a raised, forceful delivery", "sharp, clipped stress"],
        intent=["to be taken seriously and have the wrong acknowledged",
                "to regain some control over a situation that feels unfair"],
        psych=["may assume bad intent and will resist being told to calm down; the landing point is "
               "feeling heard before any solution is offered",
               "is likely to defend their position if challenged; the landing point is having the "
               "unfairness recognised"],
        strategy=["validate the frustration first, name what was unfair, then offer one concrete next step",
                  "stay calm, agree with what is legitimate in the complaint and ask what would set it right"],
        response=["That sounds genuinely unfair, and I can hear how angry you are. You have every right to "
                  "be upset. What happened that pushed it this far?",
                  "I hear you. Being treated like that would make anyone furious. Let's work out what you "
                  "need to set it right."],
        response_cmn=["听起来这真的很不公平，难怪你这么生气。发生了什么让你这么难受？",
                      "我能感觉到你的愤怒，换作是谁都会生气。我们一起看看怎么解决吧。"],
    ),
    "happiness": dict(
        situation="turned out better than they hoped",
        cue=["a bright, lively intonation", "an animated, rising melody"],
        intent=["to share the good news and have the joy celebrated with them",
                "to have someone appreciate what this moment means to them"],
        psych=["is open and receptive, and a flat reply would deflate the moment; the landing point is "
               "shared joy",
               "wants the feeling mirrored rather than analysed; the landing point is a moment of "
               "connection"],
        strategy=["mirror the excitement, then invite them to tell more of the story",
                  "celebrate with them warmly and ask what made it special"],
        response=["That's wonderful news! I can hear how happy you are. Tell me everything, how did it happen?",
                  "I'm so glad for you! You must have waited a long time for this. What was the best part?"],
        response_cmn=["太好了，听得出你真的很开心！快跟我说说是怎么回事？",
                      "真为你高兴！这份喜悦你一定等了很久吧。"],
    ),
    "neutral": dict(
        situation="is routine and matter-of-fact",
        cue=["an even, unmarked delivery", "a level, steady tone"],
        intent=["to pass on or obtain information without emotional weight",
                "to get a clear and practical answer"],
        psych=["expects an efficient reply, and reading strong emotion into it would feel intrusive; the "
               "landing point is a calm, useful exchange",
               "is composed and task-focused; the landing point is clarity"],
        strategy=["answer plainly and stay available for more",
                  "acknowledge the information and offer practical help"],
        response=["Got it, thanks for letting me know. Is there anything you'd like me to do with that?",
                  "Okay, that makes sense. Let me know if you want to talk it through."],
        response_cmn=["好的，我明白了。需要我帮你做点什么吗？",
                      "嗯，知道了。有需要随时跟我说。"],
    ),
    "sadness": dict(
        situation="they have lost or cannot change",
        cue=["a subdued, heavy delivery", "a low, falling intonation"],
        intent=["to be comforted and not be left alone with the loss",
                "to have their pain acknowledged rather than fixed"],
        psych=["may withdraw or blame themselves and would reject quick fixes; the landing point is "
               "feeling accompanied",
               "could read cheerfulness as dismissal; the landing point is gentle acceptance"],
        strategy=["acknowledge the pain, stay with the feeling and offer support without rushing to solutions",
                  "respond softly, reflect the loss back and make clear they are not alone"],
        response=["I'm so sorry. That sounds really painful. I'm here with you, and you don't have to go "
                  "through this alone.",
                  "That must be so hard to carry. Take your time; I'm listening whenever you want to talk "
                  "about it."],
        response_cmn=["真的很抱歉，这一定让你很难过。我在这儿陪着你，你不是一个人。",
                      "这种感觉一定很沉重。慢慢来，想说的时候我一直都在。"],
    ),
    "surprise": dict(
        situation="they did not see coming",
        cue=["a sudden rise in pitch", "a quickened, exclamatory delivery"],
        intent=["to make sense of the unexpected and work out how to react",
                "to share the jolt of the moment with someone"],
        psych=["is still orienting and could swing towards delight or worry; the landing point is making "
               "sense of it together",
               "is caught off guard and looks for a reference point; the landing point is steadiness"],
        strategy=["share the astonishment, then help them process what it means",
                  "react with them first, then ask how they feel about it"],
        response=["Wow, I didn't see that coming either! How are you feeling about it now that it's sinking in?",
                  "That's quite a twist! Take a moment. What do you make of it?"],
        response_cmn=["哇，这真是没想到！你现在感觉怎么样？",
                      "太意外了！你是怎么看这件事的？"],
    ),
    "disgust": dict(
        situation="they find distasteful or offensive",
        cue=["a clipped, dismissive tone", "a flat, drawn-out delivery with a falling pitch"],
        intent=["to distance themselves and have their standards recognised",
                "to hear that their reaction is reasonable"],
        psych=["may generalise the aversion and resist opposing views; the landing point is feeling that "
               "their values are respected",
               "would feel judged if the reaction were questioned; the landing point is validation"],
        strategy=["treat the reaction as reasonable, avoid defending the offending thing, then help them "
                  "decide how to respond",
                  "agree that it is off-putting and ask what boundary they want to set"],
        response=["That sounds really off-putting. I understand why you'd want nothing to do with it. Do you "
                  "want to talk about how to handle it?",
                  "I can see why that left a bad taste. Your reaction makes sense; what would help you put "
                  "some distance between you and it?"],
        response_cmn=["这确实让人很反感，我理解你为什么不想沾边。要不要一起想想怎么处理？",
                      "难怪你这么不舒服，你的感受很正常。"],
    ),
    "fear": dict(
        situation="could threaten them or someone they care about",
        cue=["a tense, unsteady delivery", "a higher, shaky pitch with hurried phrasing"],
        intent=["to feel safe again and regain a sense of control",
                "to be reassured that they will not face this alone"],
        psych=["may catastrophise and seek reassurance; the landing point is calm and a sense of safety",
               "is on alert and sensitive to dismissal; the landing point is feeling protected"],
        strategy=["reassure gently, ground them in what is known and offer one small concrete step",
                  "slow the pace, name the fear as understandable and plan the next step together"],
        response=["That sounds really frightening, and it's okay to feel scared. Let's take it one step at a "
                  "time. What feels most urgent right now?",
                  "I can hear how worried you are. You're not facing this alone; let's look at what we know "
                  "so far."],
        response_cmn=["听起来真的很可怕，害怕是很正常的。我们一步一步来，现在最让你担心的是什么？",
                      "我能感觉到你很担心。你不是一个人面对，我们先看看已经知道的情况。"],
    ),
}

# A label outside the core seven still gets well-formed (if generic) text.
GENERIC = dict(
    situation="matters to them",
    cue=["the way their voice carries it"],
    intent=["to have how they feel understood"],
    psych=["wants the feeling taken seriously; the landing point is feeling understood"],
    strategy=["acknowledge the feeling and ask an open question"],
    response=["I can hear that this matters to you. Tell me more about how you're feeling."],
    response_cmn=["我能感觉到这件事对你很重要，多跟我说说你的感受吧。"],
)

# utt2attr levels (Low / Medium / High) as words; two choices per level.
LEVEL_WORDS = {
    "rate": {"low": ["slow", "unhurried"], "medium": ["moderate", "steady"], "high": ["fast", "rapid"]},
    "pitch": {"low": ["low-pitched", "deep"], "medium": ["mid-range", "moderately pitched"],
              "high": ["high-pitched", "raised"]},
    "energy": {"low": ["soft", "quiet"], "medium": ["moderate", "normal"], "high": ["loud", "strong"]},
}
INTENSITY = {"low": "mild", "medium": "moderate", "high": "strong"}
SENTENCE_END = ".!?。！？"

C2SER_EXPLICIT = [
    'The speaker spoke at a {rate} pace, with a {pitch} tone and a {energy} volume: "{text}"{stop} '
    "Based on the speech characteristics, the emotion was inferred to be {label}.",
    'Speaking at a {rate} pace with a {energy} volume and a {pitch} tone, the speaker said: "{text}"{stop} '
    "Considering these speech characteristics together with the content, the emotion was inferred to be {label}.",
    'With a {pitch} tone, a {energy} volume and a {rate} speaking rate, the speaker said "{text}"{stop} '
    "Based on the analysis of speech characteristics, the emotion was inferred to be {label}.",
]
C2SER_IMPLICIT = [
    "The emotion was inferred to be {label}.",
    "The speaker's emotion is {label}.",
    "This speech expresses {label}.",
    "The emotion conveyed is {label}.",
]
EIPS_PERCEPTION = [
    'The user expresses {label}{intensity}, carried by {cue}; the trigger is "{quote}", which points to '
    "something that {situation}.",
    'The emotion is {label}{intensity}. The words "{quote}" locate the trigger in something that '
    "{situation}, and {cue} carries it.",
]
EIPS_INTENT = ["Beneath the words, the user wants {intent}.", "What the user really needs is {intent}."]
SUMMARIZE = [
    "The speaker appears to be talking about something that {situation}, and they seem to want {intent}. "
    "The emotion conveyed is {label}.",
    "From what the speaker says, they are dealing with something that {situation}; reading between the "
    "lines, they want {intent}. "
    "Overall, the speaker's emotion is {label}.",
    "The speaker is reacting to something that {situation}. Their words imply a wish {intent}, so the "
    "emotion is best described as {label}.",
]
ELABORATE = [
    'The speaker\'s emotion is {label}. The phrase "{quote}" points to something that {situation}, '
    "which is what makes the speaker feel this way.",
    'The speaker sounds {adj}, and the emotion is {label}. Here is why: "{quote}". These words reveal '
    "something that {situation}, which makes the {label} reading clear.",
    'The emotion is {label}. When the speaker says "{quote}", they describe something that {situation}; '
    "the wording itself carries the {label}.",
]
# The SR task's versions (summarize_sr / elaborate_sr): the same two kinds of explanation of a sentiment.
SENTIMENT_LEXICON: dict[str, dict[str, Any]] = {
    "positive": dict(situation="pleases them or turned out well",
                     intent=["to share their satisfaction", "to have the good side of it acknowledged"],
                     adj=["upbeat", "approving"]),
    "negative": dict(situation="troubles or displeases them",
                     intent=["to voice a complaint or a worry", "to have the problem taken seriously"],
                     adj=["critical", "unhappy"]),
    "neutral": dict(situation="is routine and matter-of-fact",
                    intent=["to pass on or obtain information", "to get a clear and practical answer"],
                    adj=["matter-of-fact", "even"]),
}
SUMMARIZE_SR = [
    "The speaker is talking about something that {situation}, and they seem to want {intent}. "
    "The sentiment conveyed is {label}.",
    "Reading between the lines, the speaker is dealing with something that {situation}; they want {intent}. "
    "Overall, the speaker's sentiment is {label}.",
    "The speaker's words describe something that {situation}, with a wish {intent}, so the sentiment is "
    "best described as {label}.",
]
ELABORATE_SR = [
    'The speaker\'s sentiment is {label}. The phrase "{quote}" points to something that {situation}, '
    "which is what gives the words their {label} leaning.",
    'The speaker sounds {adj}, and the sentiment is {label}. Here is why: "{quote}". These words describe '
    "something that {situation}, which makes the {label} reading clear.",
    'The sentiment is {label}. When the speaker says "{quote}", they describe something that {situation}; '
    "the wording itself carries the {label} attitude.",
]
ADJECTIVE = {"anger": "angry", "happiness": "happy", "neutral": "neutral", "sadness": "sad",
             "surprise": "surprised", "disgust": "disgusted", "fear": "afraid"}


def pick(options: Sequence[str], utt: str, *salt: str) -> str:
    """A stable choice among ``options`` for one utterance (sha256, same in every process)."""
    digest = hashlib.sha256("\x1f".join((utt, *salt)).encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def key_phrase(text: str) -> str:
    """The longest clause of a transcript: the quote an evidence-grounded answer cites."""
    clauses = [c.strip() for c in re.split(r"[,.;:!?，。；：！？]", text) if c.strip()]
    return max(clauses, key=len) if clauses else text.strip()


class OfflineTeacher(Teacher):
    """Template teacher; see the module docstring for what it is and is not."""

    name = "offline"
    batch_size = 4096

    def __init__(self, seed: int = 0, **unused: Any):
        if unused:
            raise TypeError(f"the offline teacher takes one option, seed; got {sorted(unused)}")
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"OfflineTeacher(seed={self.seed})"

    def params(self) -> dict[str, Any]:
        return {"version": VERSION, "seed": self.seed}

    def _id(self, r: Request) -> str:
        """What a phrasing is drawn by: the utterance, and the seed when it is not 0 (0 keeps older targets)."""
        return r.utt if self.seed == 0 else f"{r.utt}\x1f{self.seed}"

    def cache_key(self, request: Request) -> str:
        fields = {"version": VERSION, "seed": self.seed, "utt": request.utt, "type": request.type, "label": request.label,
                  "text": request.text, "attrs": request.attrs, "dist": request.dist, "lang": request.lang}
        blob = json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def _writer(self, target_type: str) -> Callable[[Request], str] | None:
        """The method that writes ``target_type``: the one its registry entry names (TargetType.offline)."""
        spec = TARGET_TYPES.get(target_type)
        writer = getattr(self, spec.offline, None) if spec and spec.offline else None
        return writer if callable(writer) else None

    def generate(self, requests: Sequence[Request]) -> list[str | None]:
        answers: list[str | None] = []
        for r in requests:
            writer = self._writer(r.type)
            if writer is None:
                known = [t for t in TARGET_TYPES if self._writer(t)]
                raise ValueError(f"{r.key}: the offline teacher cannot write target type '{r.type}' "
                                 f"(known: {', '.join(known)})")
            try:
                answers.append(writer(r))
            except ValueError as e:  # a bad attribute level or a missing soft label: this request fails
                log.warning("%s", e)
                answers.append(None)
        return answers

    # --- helpers -------------------------------------------------------------

    @staticmethod
    def _lex(label: str) -> dict[str, Any]:
        return LEXICON.get(label, GENERIC)

    @staticmethod
    def _raw_level(r: Request, attr: str) -> str:
        """One attribute's level (low / medium / high); ``energy`` is stage 2's ``loudness``."""
        keys = {"energy": ("loudness", "energy"), "rate": ("rate",), "pitch": ("pitch",)}[attr]
        level = next((r.attrs[k] for k in keys if k in r.attrs), None)
        if level is None:
            raise ValueError(f"{r.key}: utt2attr has no {' or '.join(keys)} level")
        if level.lower() not in LEVEL_WORDS[attr]:
            raise ValueError(f"{r.key}: {attr} level '{level}' is not Low, Medium or High")
        return level.lower()

    def _level(self, r: Request, attr: str) -> str:
        """One attribute's level as a descriptive word: a "rapid" pace, a "soft" volume."""
        return pick(LEVEL_WORDS[attr][self._raw_level(r, attr)], self._id(r), r.type, attr)

    def _common(self, r: Request) -> dict[str, str]:
        lex = self._lex(r.label)
        return {"label": r.label, "text": r.text.strip(), "quote": key_phrase(r.text),
                "situation": lex["situation"], "adj": ADJECTIVE.get(r.label, r.label),
                "cue": pick(lex["cue"], self._id(r), r.type, "cue"),
                "intent": pick(lex["intent"], self._id(r), r.type, "intent")}

    def _response(self, r: Request, salt: str) -> str:
        lex = self._lex(r.label)
        return pick(lex["response_cmn"] if r.lang == "cmn" else lex["response"], self._id(r), salt)

    # --- one writer per target type (named by its TargetType.offline) --------

    def c2ser_explicit(self, r: Request) -> str:
        text = r.text.strip()
        fields = {"rate": self._level(r, "rate"), "pitch": self._level(r, "pitch"),
                  "energy": self._level(r, "energy"), "text": text, "label": r.label,
                  "stop": "" if text[-1:] in SENTENCE_END else "."}
        return pick(C2SER_EXPLICIT, self._id(r), r.type).format(**fields)

    def c2ser_implicit(self, r: Request) -> str:
        return pick(C2SER_IMPLICIT, self._id(r), r.type).format(label=r.label)

    def eips(self, r: Request) -> str:
        lex, fields = self._lex(r.label), self._common(r)
        level = next((r.attrs[k] for k in ("loudness", "energy") if k in r.attrs), "")
        fields["intensity"] = f" at a {INTENSITY[level.lower()]} intensity" if level.lower() in INTENSITY else ""
        thought = " ".join([
            "Emotion perception: " + pick(EIPS_PERCEPTION, self._id(r), "perception").format(**fields),
            "Intent: " + pick(EIPS_INTENT, self._id(r), "intent").format(**fields),
            "Psychological modelling: The user " + pick(lex["psych"], self._id(r), "psych") + ".",
            "Strategy: " + pick(lex["strategy"], self._id(r), "strategy").capitalize() + ".",
        ])
        return f"<thought>{thought}</thought><response>{self._response(r, 'eips')}</response>"

    def direct_response(self, r: Request) -> str:
        return self._response(r, "direct")

    def _explanation(self, r: Request, emotion: list[str], sentiment: list[str]) -> str:
        """A summarize / elaborate answer for the task of the request's type: an emotion (ER) or a
        sentiment (SR, whose label is positive / negative / neutral)."""
        task = task_spec(TARGET_TYPES[r.type].task).name
        if task == "er":
            return pick(emotion, self._id(r), r.type).format(**self._common(r))
        if task != "sr":
            raise ValueError(f"{r.key}: the offline teacher explains emotions and sentiments, not task '{task}'")
        if r.label not in SENTIMENT_LEXICON:
            raise ValueError(f"{r.key}: '{r.label}' is not a sentiment ({', '.join(SENTIMENT_LEXICON)})")
        lex = SENTIMENT_LEXICON[r.label]
        fields = {"label": r.label, "quote": key_phrase(r.text), "situation": lex["situation"],
                  "intent": pick(lex["intent"], self._id(r), r.type, "intent"),
                  "adj": pick(lex["adj"], self._id(r), r.type, "adj")}
        return pick(sentiment, self._id(r), r.type).format(**fields)

    def summarize(self, r: Request) -> str:
        return self._explanation(r, SUMMARIZE, SUMMARIZE_SR)

    def elaborate(self, r: Request) -> str:
        return self._explanation(r, ELABORATE, ELABORATE_SR)

    def ambiguity_cot(self, r: Request) -> str:
        if not r.dist:
            raise ValueError(f"{r.key}: an ambiguity target needs the soft label (utt2dist)")
        # Of labels tied for the majority, the gold label leads the reasoning.
        ranked = sorted(r.dist.items(), key=lambda kv: (-kv[1], kv[0] != r.label, kv[0]))
        (major, p_major), minors = ranked[0], [(l, p) for l, p in ranked[1:] if p > 0]
        energy, rate, pitch = (self._raw_level(r, a) for a in ("energy", "rate", "pitch"))
        major_cue = pick(self._lex(major)["cue"], self._id(r), "major")
        words = sorted({w for w in re.findall(r"[A-Za-z']{4,}", r.text)}, key=lambda w: (-len(w), w))[:2]
        keywords = ", ".join([f"{energy} volume", f"{rate} speed", f"{pitch} pitch"]
                             + [f'"{w}"' for w in words])
        minor_names = " and ".join(l for l, _ in minors)
        if minors:
            text_note = f"can be read as {major}, but they also leave room for {minor_names}, so the text alone is ambiguous."
            audio = (f"{major_cue.capitalize()} supports {major}, while "
                     f"{pick(self._lex(minors[0][0])['cue'], self._id(r), 'minor')} leaves room for {minor_names}.")
            shares = " and ".join(f"{l} ({p:.0%})" for l, p in minors)
            plural = len(minors) > 1
            synthesis = pick([
                f"The evidence leans towards {major} ({p_major:.0%}) as the majority label, with {shares} as "
                f"the minority label{'s' if plural else ''}, so the prediction keeps them all.",
                f"Weighing text and prosody, {major} is the majority reading ({p_major:.0%}), but {shares} "
                f"{'remain' if plural else 'remains'} plausible, so the distribution stays mixed.",
            ], self._id(r), "synthesis")
        else:
            text_note = f"carry a clear {major} meaning with little ambiguity."
            audio = f"{major_cue.capitalize()} supports {major}; no cue points to another emotion."
            synthesis = f"Text and prosody agree on {major}, so all of the probability goes to it."
        return "\n".join([
            f"Keywords: {keywords}",
            f'Step 1: Text Analysis. The words "{r.text.strip()}" {text_note}',
            f"Step 2: Audio Analysis. Volume is {energy}, speed is {rate} and pitch is {pitch}. {audio}",
            f"Step 3: Synthesis. {synthesis}",
            f"Distribution: {format_dist_line(r.dist)}",
        ])
