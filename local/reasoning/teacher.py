"""Teachers: whatever writes reasoning targets from a prompt, behind one interface.

``Teacher.generate(requests) -> list[str | None]`` is all stage 3 sees, so the
backend is a config choice (``conf/teacher/*.yaml``):

* ``offline`` (:mod:`local.reasoning.offline`): deterministic templates, no
  model; a stand-in that lets the pipeline and its tests run anywhere.
* ``hf``: a local transformers causal LM (e.g. Qwen2-7B-Instruct on a GPU).
* ``openai``: any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, a
  vLLM or llama.cpp server).  The API key comes from an environment variable
  named in the config and is never logged, repr'd or written anywhere.

:class:`CachedTeacher` wraps any backend with an sqlite answer cache keyed by
everything that determines an answer, so a re-run or a crash never pays for
the same answer twice, and a re-run asks again only what failed (``None``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One target to write.

    ``prompt`` (or ``messages``, a chat) is what a model teacher reads; the
    structured fields are what the offline teacher reads, and they keep a
    request self-describing in logs.
    """

    key: str                      # unique within a run, e.g. "<utt> <type>"
    type: str                     # target type (see local.reasoning.targets.TARGET_TYPES)
    prompt: str = ""
    messages: list[dict[str, str]] | None = None
    utt: str = ""
    label: str = ""
    text: str = ""
    attrs: dict[str, str] = field(default_factory=dict)   # utt2attr levels, e.g. {"pitch": "High"}
    dist: dict[str, float] | None = None                  # utt2dist soft label
    lang: str = "en"

    def chat(self) -> list[dict[str, str]]:
        """The request as chat messages (a bare prompt becomes one user turn)."""
        return list(self.messages) if self.messages else [{"role": "user", "content": self.prompt}]


class Teacher(ABC):
    """A backend answering requests; ``None`` marks an answer that failed for good."""

    name: str = "teacher"   # written into targets.jsonl
    batch_size: int = 64    # how many requests one generate() call should get

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[str | None]:
        ...

    def params(self) -> dict[str, Any]:
        """Everything besides the prompt that changes an answer (model, decoding settings)."""
        return {}

    def cache_key(self, request: Request) -> str:
        """sha256 of what determines the answer: backend, model, decoding, prompt.

        Identical prompts of two utterances share an answer under greedy
        decoding (it would be the same anyway); a sampling teacher keys on the
        request too, so every utterance gets its own sample.
        """
        payload: dict[str, Any] = {"teacher": self.name, "params": self.params(),
                                   "chat": request.chat()}
        if float(self.params().get("temperature", 0) or 0) > 0:
            payload["request"] = request.key
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()


# --- hf: a local transformers model ---------------------------------------------

class HFTeacher(Teacher):
    """A local causal LM loaded with ``from_pretrained``; batched, left-padded generation."""

    def __init__(self, path: str, max_new_tokens: int = 512, temperature: float = 0.0,
                 batch_size: int = 8, device: str = "auto", dtype: str = "auto", seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.max_new_tokens, self.temperature = str(path), int(max_new_tokens), float(temperature)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.name = f"hf:{self.path}"
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # Decoder-only models continue from the last position: pad on the left.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"tokenizer of {self.path} has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch_dtype).to(self.device)
        self.model.eval()

    def __repr__(self) -> str:
        return f"HFTeacher(path={self.path!r}, device={str(self.device)!r})"

    def params(self) -> dict[str, Any]:
        return {"model": self.path, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "seed": self.seed}

    def format_prompt(self, request: Request) -> str:
        """The model input: the chat template when the tokenizer has one, else the plain prompt."""
        chat = request.chat()
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(turn["content"] for turn in chat)

    def generate(self, requests: Sequence[Request]) -> list[str | None]:
        import torch

        answers: list[str | None] = []
        sample = self.temperature > 0
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            # A chat template already holds the special tokens (BOS ...) it needs.
            inputs = self.tokenizer([self.format_prompt(r) for r in batch], return_tensors="pt",
                                    padding=True, add_special_tokens=not self.tokenizer.chat_template)
            # Only ids and mask: some tokenizers add token_type_ids, which causal LMs reject.
            kwargs: dict[str, Any] = {"input_ids": inputs["input_ids"].to(self.device),
                                      "attention_mask": inputs["attention_mask"].to(self.device),
                                      "max_new_tokens": self.max_new_tokens, "do_sample": sample,
                                      "pad_token_id": self.tokenizer.pad_token_id}
            if sample:
                kwargs["temperature"] = self.temperature
                torch.manual_seed(self.seed + start)
            with torch.inference_mode():
                out = self.model.generate(**kwargs)
            new = out[:, inputs["input_ids"].shape[1]:]
            for text in self.tokenizer.batch_decode(new, skip_special_tokens=True):
                answers.append(text.strip() or None)
        return answers


# --- openai: an OpenAI-compatible HTTP endpoint ------------------------------------

class _Secret:
    """Holds the API key so that no repr, f-string or traceback of ours shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<secret>" if self._value else "<none>"

    __str__ = __repr__


class OpenAITeacher(Teacher):
    """``POST {base_url}/chat/completions`` with retries and exponential back-off.

    Server errors (5xx, 429), timeouts, connection errors and answers that do
    not parse are retried ``max_retries`` times, sleeping ``backoff * 2**k``;
    then the answer is ``None``.  Other 4xx (a bad key, a prompt too long) are
    not retried: asking again would fail the same way.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 5, backoff: float = 2.0,
                 max_new_tokens: int = 1024, temperature: float = 0.0, workers: int = 8):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.workers = max(1, int(workers))
        # Several requests per worker per call, so one slow retry does not idle the other workers.
        self.batch_size = 4 * self.workers
        self.name = f"openai:{model}"
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            log.warning("environment variable %s is not set: sending requests without an API key",
                        api_key_env)
        self._key = _Secret(key)

    def __repr__(self) -> str:
        return f"OpenAITeacher(base_url={self.base_url!r}, model={self.model!r}, key={self._key!r})"

    def params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature}

    def generate(self, requests: Sequence[Request]) -> list[str | None]:
        if self.workers == 1 or len(requests) <= 1:
            return [self._ask(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self._ask, requests))

    def _scrub(self, text: str) -> str:
        key = self._key.get()
        return text.replace(key, "<secret>") if key else text

    def _ask(self, request: Request) -> str | None:
        import requests as http

        headers = {"Content-Type": "application/json"}
        if self._key.get():
            headers["Authorization"] = f"Bearer {self._key.get()}"
        body = {"model": self.model, "messages": request.chat(),
                "max_tokens": self.max_new_tokens, "temperature": self.temperature}
        url = f"{self.base_url}/chat/completions"
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = http.post(url, json=body, headers=headers, timeout=self.timeout)
            except (http.Timeout, http.ConnectionError) as e:
                reason = f"{type(e).__name__}: {self._scrub(str(e))[:200]}"
            else:
                if reply.status_code == 429 or reply.status_code >= 500:
                    reason = f"HTTP {reply.status_code}"
                elif reply.status_code >= 400:
                    log.error("%s: HTTP %d from %s, not retried: %s", request.key, reply.status_code,
                              url, self._scrub(reply.text)[:300])
                    return None
                else:
                    answer = _content_of(reply)
                    if answer is not None:
                        return answer
                    reason = f"malformed answer: {self._scrub(reply.text)[:200]!r}"
            log.warning("%s: attempt %d/%d failed (%s)", request.key, attempt + 1,
                        self.max_retries + 1, reason)
        log.error("%s: giving up after %d attempts (%s)", request.key, self.max_retries + 1, reason)
        return None


def _content_of(reply) -> str | None:
    """The message text of a chat-completions answer, or None when it is not one."""
    try:
        content = reply.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, str) or not content.strip():
        return None
    return content.strip()


# --- the answer cache ---------------------------------------------------------------

class CachedTeacher(Teacher):
    """Any teacher plus an on-disk answer cache (sqlite, one commit per answer).

    Only good answers are stored: a failure (``None``) is asked again on the
    next run.  Misses go to the inner teacher ``batch_size`` at a time, so a
    crash loses at most one batch.
    """

    def __init__(self, inner: Teacher, path: Path | str):
        self.inner, self.path = inner, Path(path)
        self.name, self.batch_size = inner.name, inner.batch_size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self._db.commit()

    def __repr__(self) -> str:
        return f"CachedTeacher({self.inner!r}, path={str(self.path)!r})"

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def cache_key(self, request: Request) -> str:
        return self.inner.cache_key(request)

    def close(self) -> None:
        self._db.close()

    def generate(self, requests: Sequence[Request]) -> list[str | None]:
        keys = [self.inner.cache_key(r) for r in requests]
        answers: list[str | None] = [self._lookup(k) for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        if len(requests):
            log.info("%s: %d of %d answers cached, asking %d", self.name,
                     len(requests) - len(todo), len(requests), len(todo))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for i, answer in zip(chunk, self.inner.generate([requests[i] for i in chunk])):
                answers[i] = answer
                if answer is not None:
                    self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (keys[i], answer))
                    self._db.commit()
        return answers

    def _lookup(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None


# --- construction from the `teacher` config group ------------------------------------

def build_teacher(cfg: Mapping[str, Any]) -> Teacher:
    """The teacher a ``conf/teacher/*.yaml`` describes, wrapped in a cache when ``cache`` is set."""
    from local.reasoning.offline import OfflineTeacher

    backends = {"offline": OfflineTeacher, "hf": HFTeacher, "openai": OpenAITeacher}
    options = dict(cfg)
    backend = options.pop("backend", None)
    cache = options.pop("cache", None)
    if backend not in backends:
        raise ValueError(f"teacher.backend is {backend!r}; known: {', '.join(backends)}")
    try:
        teacher = backends[backend](**options)
    except TypeError as e:
        raise ValueError(f"bad options for the {backend} teacher {sorted(options)}: {e}") from None
    return CachedTeacher(teacher, cache) if cache else teacher
