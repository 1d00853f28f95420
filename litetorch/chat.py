"""`ChatSession`: multi-turn chat that only ever processes new tokens (lesson 16).

Each turn renders the *whole* conversation with the chat template, tokenizes it, and hands it to
`generate` with one `PromptCache`. The cache already holds the system prompt and every earlier
turn, so the longest common prefix is everything but the new user message (and the few tokens
of the previous reply that re-tokenize differently), and only those are run through the model.
Correctness never depends on the template behaving: reuse is decided by comparing token ids.

Errors (an empty message, a turn that does not fit in the context, a bad sampling option) are
raised before anything changes; a turn that fails or is interrupted midway is not added to the
history, and the cache stays consistent, so the next turn is exactly what it would have been.
"""
from __future__ import annotations

from . import checks
from .errors import ConfigError, ContextLengthError, TokenizerError
from .generation import GenerationResult, PromptCache, generate
from .sampling import Sampler

_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "stop", "on_token")


def _check_options(options: dict) -> None:
    """Reject unknown options and bad values now, not at the first turn (or mid-stream)."""
    unknown = sorted(set(options) - set(_SAMPLING))
    if unknown:
        raise ConfigError(f"unknown chat option(s) {unknown}; allowed: {', '.join(_SAMPLING)}")
    Sampler(**{k: v for k, v in options.items() if k not in ("stop", "on_token")})
    checks.stop_strings(options.get("stop"))
    checks.callable_or_none("on_token", options.get("on_token"))


def _system_prompt(text) -> str | None:
    if text is not None and not isinstance(text, str):
        raise ConfigError(f"system_prompt must be a str or None, got {text!r:.80} ({type(text).__name__})")
    return text or None  # "" means no system prompt (the template may insert its default one)


class ChatSession:
    """chat = ChatSession(model, tok, system_prompt="You are terse.")
    reply = chat.send("Hi!")            # -> GenerationResult; chat.history grows by two messages
    for piece in chat.send("And?", stream=True): print(piece, end="")

    `drop_oldest=True` drops the oldest user/assistant pairs (and counts them in `.dropped`) when
    a turn would not fit in the context, instead of raising ContextLengthError; a pair, so the history
    never starts with an orphan assistant turn.
    `allow_special_tokens_in_content=True` lets control-token strings typed in a message act as control
    tokens (HF's default); by default they are plain text, so a message cannot forge a turn (lesson 13).
    """

    def __init__(self, model, tokenizer, system_prompt: str | None = None, max_new_tokens: int = 256,
                 drop_oldest: bool = False, allow_special_tokens_in_content: bool = False, **sampling):
        _check_options(sampling)
        self.model = checks.language_model(model)
        if not callable(getattr(tokenizer, "apply_chat_template", None)):
            raise ConfigError(f"tokenizer must be a litetorch Tokenizer with a chat template, "
                              f"got {type(tokenizer).__name__}")
        if getattr(tokenizer, "chat_template", True) in (None, ""):
            raise TokenizerError("this tokenizer has no chat template, so it cannot render a conversation; use "
                                 "generate(..., raw=True) with a prompt you format yourself")
        self.tokenizer = tokenizer
        self.system_prompt = _system_prompt(system_prompt)
        self.max_new_tokens = checks.positive_int("max_new_tokens", max_new_tokens)
        self.drop_oldest = checks.boolean("drop_oldest", drop_oldest)
        # Content is text: a user typing "<|im_end|>" cannot close their turn and forge a system one (lesson 13).
        self.allow_special_tokens_in_content = checks.boolean("allow_special_tokens_in_content",
                                                              allow_special_tokens_in_content)
        self.sampling = sampling
        self.history: list[dict] = []
        self.cache = PromptCache(model)
        self.dropped = 0
        self.last: GenerationResult | None = None

    def messages(self, extra=()) -> list[dict]:
        """The conversation as the template sees it: system prompt (if any), history, `extra`."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.history + list(extra)

    # lesson 16: begin (chat)
    def send(self, text: str, stream: bool = False, max_new_tokens: int | None = None, **overrides):
        """Add a user message and generate the assistant's reply (history updated when it completes)."""
        checks.text("a chat message", text)
        max_new = self.max_new_tokens if max_new_tokens is None else checks.positive_int("max_new_tokens",
                                                                                         max_new_tokens)
        _check_options(overrides)
        user = {"role": "user", "content": text}
        msgs, kept = self._fit(user, max_new)  # may raise: nothing has changed yet
        # One PromptCache for the whole chat: generate() reuses its longest common prefix with the
        # newly rendered conversation, so only the new tokens are run through the model.
        out = generate(self.model, self.tokenizer, msgs, max_new_tokens=max_new, cache=self.cache, stream=stream,
                       allow_special_tokens_in_content=self.allow_special_tokens_in_content,
                       **dict(self.sampling, **overrides))
        if stream:
            return self._stream(out, kept, user)
        self._commit(kept, user, out)
        return out
    # lesson 16: end (chat)

    def _fit(self, user_msg: dict, max_new_tokens: int) -> tuple[list[dict], list[dict]]:
        """(messages for this turn, the history kept); raise (or drop old turns) if they exceed the context."""
        n_ctx = self.model.context_length
        history = list(self.history)
        while True:
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            msgs = system + history + [user_msg]
            n = len(self.tokenizer.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=True,
                allow_special_tokens_in_content=self.allow_special_tokens_in_content))
            if n + max_new_tokens <= n_ctx:
                return msgs, history
            if not self.drop_oldest or len(history) < 2:
                raise ContextLengthError(
                    f"this turn needs {n} prompt tokens + max_new_tokens={max_new_tokens} = {n + max_new_tokens}, "
                    f"over the context length of {n_ctx}; /reset the chat or pass drop_oldest=True")
            history = history[2:]  # drop the oldest user/assistant pair

    def _stream(self, s, kept, user):
        yield from s  # if the caller stops early, the turn is not added (the cache stays consistent)
        self._commit(kept, user, s.result)

    def _commit(self, kept, user, result: GenerationResult) -> None:
        self.dropped += (len(self.history) - len(kept)) // 2
        self.history = kept + [user, {"role": "assistant", "content": result.text}]
        self.last = result

    def set_system_prompt(self, text: str | None) -> None:
        """A new system prompt starts a new conversation (the cache keeps what still matches)."""
        self.system_prompt = _system_prompt(text)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays); the cache is kept for its prefix."""
        self.history = []
        self.dropped = 0
        self.last = None

    @property
    def cache_length(self) -> int:
        return len(self.cache)
