"""The format and gold checks of each reasoning target type, and the helpers they share.

Kept apart from :mod:`local.reasoning.targets` (the registry of target types and the stage-3
writer) because a format check needs no teacher and no data dir: stage 3 asks it of a teacher's
answers, stage 10 of a model's outputs.  ``targets`` imports this module, never the reverse.
"""
from __future__ import annotations

import re

from local.data.kaldi import SENTIMENTS
from local.reasoning.teacher import Request


# Words that count as naming a label: a teacher writes "angry" as often as "anger".
LABEL_FORMS = {
    "anger": ("anger", "angry", "生气", "愤怒"),
    "happiness": ("happiness", "happy", "joy", "开心", "高兴", "快乐"),
    "neutral": ("neutral", "中性", "平静"),
    "sadness": ("sadness", "sad", "sorrow", "悲伤", "难过", "伤心"),
    "surprise": ("surprise", "surprised", "惊讶", "吃惊"),
    "disgust": ("disgust", "disgusted", "厌恶", "恶心"),
    "fear": ("fear", "fearful", "afraid", "scared", "害怕", "恐惧"),
    # classes of recipes beyond the core 7 (RAVDESS, MSP-Podcast, EmoDB); any other label is its own only form
    "calm": ("calm", "calmness"),
    "contempt": ("contempt", "contemptuous", "轻蔑"),
    "boredom": ("boredom", "bored", "无聊"),
}
# The SR task's classes; kept apart from LABEL_FORMS so that "positive" never counts as naming an emotion.
SENTIMENT_FORMS = {
    "positive": ("positive", "积极", "正面"),
    "negative": ("negative", "消极", "负面"),
    "neutral": LABEL_FORMS["neutral"],
}

EIPS_FORMAT = re.compile(r"\s*<thought>(?P<thought>.*?)</thought>\s*<response>(?P<response>.*?)</response>\s*",
                         re.DOTALL)
EIPS_STEPS = {"Emotion perception": r"emotion perception", "Intent": r"intent",
              "Psychological modelling": r"psychological model(?:l)?ing", "Strategy": r"strategy"}
AMBIGUITY_STEPS = ("Step 1", "Step 2", "Step 3")
QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')
DIST_ITEM = re.compile(r"([A-Za-z_]+)\s*[:=]\s*([0-9]*\.?[0-9]+)")


def format_dist_line(dist: dict[str, float]) -> str:
    """``anger:0.60 sadness:0.40``: most likely first, two decimals, as the teachers are asked to write it."""
    return " ".join(f"{l}:{p:.2f}" for l, p in sorted(dist.items(), key=lambda kv: (-kv[1], kv[0])) if p > 0)


# --- validation -----------------------------------------------------------------------

def names_label(answer: str, label: str) -> bool:
    """Whether the answer names ``label`` (or one of its word forms; a sentiment's too)."""
    for form in LABEL_FORMS.get(label) or SENTIMENT_FORMS.get(label) or (label,):
        if form.isascii():
            if re.search(rf"\b{re.escape(form)}\b", answer, re.IGNORECASE):
                return True
        elif form in answer:
            return True
    return False


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def quotes_transcript(answer: str, text: str) -> bool:
    """Whether some double-quoted span of the answer is words of the transcript."""
    transcript = _normalise(text)
    for match in QUOTED.finditer(answer):
        span = _normalise(match.group(1) or match.group(2))
        if span and span in transcript:
            return True
    return False


def parse_distribution_line(answer: str) -> dict[str, float]:
    """The last ``Distribution: a:p b:q`` line of an answer; ValueError when absent or malformed."""
    lines = [l for l in answer.splitlines() if l.strip().lower().startswith("distribution:")]
    if not lines:
        raise ValueError("no 'Distribution:' line")
    # LLMs also write "anger: 0.6, sadness: 0.4"; accept any such spacing and separators.
    dist = {label.lower(): float(p) for label, p in DIST_ITEM.findall(lines[-1].split(":", 1)[1])}
    if not dist:
        raise ValueError("no label:probability on the 'Distribution:' line")
    if any(not 0 <= p <= 1 for p in dist.values()) or abs(sum(dist.values()) - 1) > 0.05:
        raise ValueError(f"'Distribution:' probabilities do not sum to 1 ({sum(dist.values()):.2f})")
    return dist


def _argmax(dist: dict[str, float]) -> set[str]:
    top = max(dist.values())
    return {l for l, p in dist.items() if p >= top - 1e-9}


# What C²SER's explicit CoT must describe (Table I: "Ensure including all speech features"), by the
# nouns (or, for volume, also the adjectives) a description of each uses.
SPEECH_FEATURES = {
    "rate": r"\b(?:pace|rate|speed|tempo)\b|语速",
    "pitch": r"\b(?:pitch|pitched|tone)\b|音调|音高|语调",
    "volume": r"\b(?:volume|loudness|loud|quiet|soft|energy|level)\b|音量|响度",
}
# The implicit teacher is asked for fewer than ten words; twice that leaves room for an LLM's
# phrasing, while an output that goes on to describe the speech is no longer implicit.
IMPLICIT_MAX_WORDS = 20


# --- the format of each type (TargetType.check) and its checks against the gold (TargetType.check_gold) ---

def _label_problem(text: str) -> str | None:
    return None if any(names_label(text, label) for label in LABEL_FORMS) else "names no emotion label"


def check_c2ser_explicit(text: str, transcript: str | None = None) -> str | None:
    problem = _label_problem(text)
    if problem:
        return problem
    missing = [name for name, pattern in SPEECH_FEATURES.items() if not re.search(pattern, text, re.IGNORECASE)]
    if missing:
        return f"does not describe the speech's {', '.join(missing)}"
    return None


def check_c2ser_implicit(text: str, transcript: str | None = None) -> str | None:
    problem = _label_problem(text)
    if problem:
        return problem
    if len(text.split()) > IMPLICIT_MAX_WORDS:
        return f"{len(text.split())} words: not a short description in terms of the label"
    return None


def check_eips(text: str, transcript: str | None = None) -> str | None:
    match = EIPS_FORMAT.fullmatch(text)
    if not match:
        return "not <thought>...</thought><response>...</response>"
    missing = [step for step, pattern in EIPS_STEPS.items()
               if not re.search(pattern, match["thought"], re.IGNORECASE)]
    if missing:
        return f"thought lacks the EIPS step(s) {', '.join(missing)}"
    return None if match["response"].strip() else "empty response"


def check_eips_gold(request: Request, answer: str) -> str | None:
    if not names_label(EIPS_FORMAT.fullmatch(answer)["thought"], request.label):
        return f"thought does not name the gold label '{request.label}'"
    return None


def check_direct_response(text: str, transcript: str | None = None) -> str | None:
    return "contains <thought>/<response> tags" if re.search(r"</?(thought|response)>", text) else None


def check_ambiguity_cot(text: str, transcript: str | None = None) -> str | None:
    missing = [s for s in AMBIGUITY_STEPS if s.lower() not in text.lower()]
    if missing:
        return f"lacks {', '.join(missing)}"
    try:
        parse_distribution_line(text)
    except ValueError as e:
        return f"bad distribution: {e}"
    return None


def check_ambiguity_cot_gold(request: Request, answer: str) -> str | None:
    if request.dist:
        predicted = parse_distribution_line(answer)
        if not _argmax(predicted) & _argmax(request.dist):
            return (f"distribution arg-max {'/'.join(sorted(_argmax(predicted)))} is not the gold majority "
                    f"{'/'.join(sorted(_argmax(request.dist)))}")
    return None


def _sentiment_problem(text: str) -> str | None:
    return None if any(names_label(text, s) for s in SENTIMENTS) else f"names no sentiment ({', '.join(SENTIMENTS)})"


def _quote_problem(text: str, transcript: str | None) -> str | None:
    if transcript and not quotes_transcript(text, transcript):
        return "quotes no words of the transcript"
    if not transcript and not QUOTED.search(text):
        return "quotes nothing"
    return None


def check_summarize(text: str, transcript: str | None = None) -> str | None:
    return _label_problem(text)


def check_elaborate(text: str, transcript: str | None = None) -> str | None:
    return _label_problem(text) or _quote_problem(text, transcript)


def check_summarize_sr(text: str, transcript: str | None = None) -> str | None:
    return _sentiment_problem(text)


def check_elaborate_sr(text: str, transcript: str | None = None) -> str | None:
    return _sentiment_problem(text) or _quote_problem(text, transcript)


# --- the checks of the types written from the data (TargetType.from_data) ----------------------------

# The paper's "Label Only (Original)" targets (Tables 10-12 and the appendix examples): ER "The speaker's
# speech reflects a neutral state", SR "The speaker's sentiment is neutral."
LABEL_ONLY = re.compile(r"The speaker's speech reflects an? (?P<label>\S.*?) state\.?", re.IGNORECASE)
LABEL_ONLY_SR = re.compile(r"The speaker's sentiment is (?P<label>positive|negative|neutral)\.?", re.IGNORECASE)
MARKUP = re.compile(r"</?[A-Za-z_]+>")


def check_label_only(text: str, transcript: str | None = None) -> str | None:
    return None if LABEL_ONLY.fullmatch(text.strip()) else "not \"The speaker's speech reflects a <label> state.\""


def check_label_only_sr(text: str, transcript: str | None = None) -> str | None:
    if LABEL_ONLY_SR.fullmatch(text.strip()):
        return None
    return f"not \"The speaker's sentiment is <{'|'.join(SENTIMENTS)}>.\""


def check_plain_line(text: str, transcript: str | None = None) -> str | None:
    """A transcript or a short answer: one line of plain text (a model that explains itself fails)."""
    if "\n" in text.strip():
        return "more than one line"
    return "contains markup tags" if MARKUP.search(text) else None


def check_transcript_gold(request: Request, answer: str) -> str | None:
    return None if _normalise(answer) == _normalise(request.text) else "is not the utterance's transcript"
