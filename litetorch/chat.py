"""`ChatSession`: multi-turn chat that only ever processes new tokens (lesson 16).

Each turn renders the *whole* conversation with the chat template, tokenizes it, and hands it to
`generate` with one `PromptCache`. The cache already holds the system prompt and every earlier
turn, so the longest common prefix is everything but the new user message (and the few tokens
of the previous reply that re-tokenize differently), and only those are run through the model.
Correctness never depends on the template behaving: reuse is decided by comparing token ids.
"""
from __future__ import annotations

from .errors import ContextLengthError
from .generation import GenerationResult, PromptCache, generate


class ChatSession:
    """chat = ChatSession(model, tok, system_prompt="You are terse.")
    reply = chat.send("Hi!")            # -> GenerationResult; chat.history grows by two messages
    for piece in chat.send("And?", stream=True): print(piece, end="")

    `drop_oldest=True` drops the oldest user/assistant pairs (and says so in `.dropped`) when a
    turn would not fit in the context, instead of raising ContextLengthError.
    """

    def __init__(self, model, tokenizer, system_prompt: str | None = None, max_new_tokens: int = 256,
                 drop_oldest: bool = False, **sampling):
        self.model, self.tokenizer = model, tokenizer
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.drop_oldest = drop_oldest
        self.sampling = sampling
        self.history: list[dict] = []
        self.cache = PromptCache(model)
        self.dropped = 0
        self.last: GenerationResult | None = None

    def messages(self, extra=()) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.history + list(extra)

    def _fit(self, user_msg: dict, max_new_tokens: int) -> list[dict]:
        """The messages for this turn; raise (or drop old turns) if they exceed the context."""
        n_ctx = self.model.config.max_position_embeddings
        history = list(self.history)
        while True:
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            msgs = system + history + [user_msg]
            n = len(self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
            if n + max_new_tokens <= n_ctx:
                return msgs, history
            if not self.drop_oldest or len(history) < 2:
                raise ContextLengthError(
                    f"this turn needs {n} prompt tokens + max_new_tokens={max_new_tokens} = {n + max_new_tokens}, "
                    f"over the context length of {n_ctx}; /reset the chat or pass drop_oldest=True")
            history = history[2:]  # drop the oldest user/assistant pair

    def send(self, text: str, stream: bool = False, max_new_tokens: int | None = None, **overrides):
        """Add a user message and generate the assistant's reply (history updated when it completes)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a chat message must be a non-empty string")
        max_new = max_new_tokens or self.max_new_tokens
        user = {"role": "user", "content": text}
        msgs, kept = self._fit(user, max_new)  # may raise: nothing has changed yet
        options = dict(self.sampling, **overrides)
        if stream:
            return self._stream(msgs, kept, user, max_new, options)
        result = generate(self.model, self.tokenizer, msgs, max_new_tokens=max_new, cache=self.cache, **options)
        self._commit(kept, user, result)
        return result

    def _stream(self, msgs, kept, user, max_new, options):
        s = generate(self.model, self.tokenizer, msgs, max_new_tokens=max_new, cache=self.cache, stream=True,
                     **options)
        yield from s  # if the caller stops early, the turn is not added (the cache stays consistent)
        self._commit(kept, user, s.result)

    def _commit(self, kept, user, result: GenerationResult) -> None:
        self.dropped += (len(self.history) - len(kept)) // 2
        self.history = kept + [user, {"role": "assistant", "content": result.text}]
        self.last = result

    def set_system_prompt(self, text: str | None) -> None:
        self.system_prompt = text or None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays); the cache is kept for its prefix."""
        self.history = []
        self.dropped = 0

    def clear_cache(self) -> None:
        self.cache.reset()

    @property
    def cache_length(self) -> int:
        return len(self.cache)
