"""What a real engine was asked to generate and what it generated, recorded from outside it: the oracle for KV reuse.

The reuse a prompt should get is derived from the previous call's prompt and generated tokens (what llama.cpp was
given to decode), never from the engine's own record of its cache; and each reply is checked against a fresh
engine's reply to the same prompt tokens, so reuse cannot change what the model says.

    seen = Generations(engine, monkeypatch)        # after engine.reset(): the cache holds nothing
    ...                                            # a turn through ChatSession, the server, ...
    assert stats == seen.expected(next_tokens)     # (evaluated, reused) for the next prompt
    seen.assert_same_as(fresh_engine, GREEDY)      # every recorded reply, again on an empty cache
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)  # generated, in order (the end-of-turn token is not one)
    finish: str | None = None
    max_tokens: int | None = None

    def held(self) -> list[int]:
        """What the KV cache holds after it: the prompt and every generated token but the last of a reply cut by
        its length (sampled, never decoded; a reply that stopped had its last token decoded to sample the end)."""
        return self.prompt + (self.tokens[:-1] if self.finish == "length" else self.tokens)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Generations:
    """Every `stream_generate` call of `engine` from now on, with what it yielded."""

    def __init__(self, engine, monkeypatch):
        self.engine = engine
        self.calls: list[Generation] = []
        real = engine.stream_generate

        def stream_generate(prompt, **kw):
            tokens = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
            call = Generation(tokens, max_tokens=kw.get("max_tokens"))
            self.calls.append(call)
            for step in real(prompt, **kw):
                if step.token is not None:
                    call.tokens.append(step.token)
                call.finish = step.finish_reason or call.finish
                yield step

        monkeypatch.setattr(engine, "stream_generate", stream_generate)

    def expected(self, tokens: list[int]) -> tuple[int, int]:
        """(prompt tokens evaluated, reused from the cache) for `tokens` after the calls so far: all it shares with
        what the last call left in the cache, but at least one token is evaluated (its logits start the reply)."""
        reused = common_prefix(self.calls[-1].held(), tokens) if self.calls else 0
        reused = min(reused, len(tokens) - 1)
        return len(tokens) - reused, reused

    def assert_same_as(self, fresh, sampling) -> None:
        """Each recorded reply is what `fresh` (another engine on the same model) says to its prompt from an empty
        cache."""
        for i, call in enumerate(self.calls):
            fresh.reset()
            steps = list(fresh.stream_generate(call.prompt, max_tokens=call.max_tokens, sampling=sampling))
            assert [s.token for s in steps if s.token is not None] == call.tokens, f"call {i}"
            assert steps[-1].finish_reason == call.finish, f"call {i}"
