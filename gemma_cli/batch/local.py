"""The local runner: lines as jobs on the engine's parallel sequences (or one at a time, drafting)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gemma_cli.batch.lines import Failure, Line, Request
from gemma_cli.batch.output import Output
from gemma_cli.batch.records import Answer, check_json
from gemma_cli.batch.run import Defaults, Run, Signals, Summary
from gemma_cli.chat.session import format_of_engine, turn_steps
from gemma_cli.errors import CapabilityError, GemmaError
from gemma_cli.format import reply
from gemma_cli.format.prompt import ends_in_thought
from gemma_cli.format.stop_strings import cut_at_stop, hit_stop
from gemma_cli.media.parts import MediaParts, media_parts, prompt_order

if TYPE_CHECKING:
    from gemma_cli.engine import Engine


def run_local(engine: "Engine", n: int, source: str | Path, output: Output, defaults: Defaults, **kw) -> Summary:
    """Run the lines of `source` on `n` parallel sequences of `engine` (opened with n_seq = n + 1),
    or one line at a time on an engine of one sequence (speculative decoding, if a drafter is attached)."""
    from gemma_cli.engine.parallel import (
        Parallel,  # the engine (llama_cpp): loaded by local runs only
    )

    run = Run(source, output, **kw)
    runner = Serial(engine) if engine.draft is not None or engine.n_seq == 1 else Parallel(engine, n)
    run.on_stop(runner.stop)
    local = Local(engine, defaults)

    def tick() -> None:
        run.summary.live_out = runner.generated_tokens
        run.progress(run.summary)

    runner.tick = tick
    with Signals(run):
        results = runner.run(local.jobs(run))
        try:
            for done in results:
                line = done.job.key
                if done.error is not None:
                    run.fail(line, Failure.of(done.error))
                else:
                    try:
                        run.finish(line, local.answer(line, done))
                    except GemmaError as e:
                        run.fail(line, Failure.of(e))
                if run.stop_reason == "fail-fast":
                    break  # lines still running are dropped (and run again on resume)
        except KeyboardInterrupt:
            pass  # a second signal: running lines are dropped, and run again on resume
        finally:
            results.close()
    if engine.draft is not None:
        total = engine.draft.total
        run.summary.draft, run.summary.drafted, run.summary.accepted = engine.draft.kind, total.drafted, total.accepted
    return run.close()


class Serial:
    """Lines one at a time through the engine's own decoding, which drafts (engine.draft).

    Parallel's face (run, stop, tick, generated_tokens) for run_local. Drafting and parallel
    sequences do not mix: llama.cpp's MTP context follows one sequence of the main one.
    """

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.tick: Callable[[], None] | None = None
        self.generated_tokens = 0

    def stop(self) -> None:
        pass  # the lines stop coming (Run.lines); the running one finishes

    def run(self, jobs):
        for job in jobs:
            yield self._one(job)

    def _one(self, job):
        from gemma_cli.engine.parallel import (
            Finished,  # the engine (llama_cpp): loaded by local runs only
        )

        t0, pieces, tokens, last, before = time.perf_counter(), [], [], None, self.generated_tokens
        finish = None
        steps = turn_steps(self.engine, job.prompt, job.media, job.max_tokens, job.sampling, job.shared,
                           free_thought=job.free_thought, in_thought=job.in_thought, think_budget=job.think_budget,
                           save_at=[job.shared] if job.shared else None)  # the prompt cache keeps the shared head
        try:
            for last in steps:
                pieces.append(last.text)
                if last.token is not None:
                    tokens.append(last.token)
                self.generated_tokens = before + last.generated_tokens
                if self.tick is not None:
                    self.tick()
                if hit_stop(pieces, job.stop):
                    finish = "stop"
                    break
        except GemmaError as e:
            return Finished(job, error=e)
        finally:
            steps.close()
        return Finished(job, cut_at_stop("".join(pieces), job.stop), tokens, last.prompt_tokens, last.reused_tokens,
                        last.generated_tokens, finish or last.finish_reason, last.ttft, time.perf_counter() - t0)


class Local:
    """Lines into engine jobs, and finished jobs into answers."""

    def __init__(self, engine: "Engine", defaults: Defaults):
        self.engine = engine
        self.defaults = defaults
        self.format = format_of_engine(engine)
        self._media = None
        self.model = str(engine.info.meta.get("general.name") or engine.path.stem)

    def jobs(self, run: Run):
        from gemma_cli.engine.parallel import (
            Job,  # the engine (llama_cpp): loaded by local runs only
        )

        for line in run.lines():
            try:
                prompt, shared, media, sampling, think, in_thought = self._prompt(line.request)
            except GemmaError as e:
                run.fail(line, Failure.of(e))
                continue
            except Exception as e:  # noqa: BLE001 - the prompt builder on odd messages: that line fails, not the run
                run.fail(line, Failure("invalid_line", f"line {line.number}: the messages cannot be rendered ({e})"))
                continue
            r = line.request
            budget = self.defaults.think_budget if r.think_budget is None else r.think_budget
            yield Job(prompt, sampling, r.max_tokens or self.defaults.max_tokens, media, shared,
                      free_thought=bool(think and sampling.grammar and self.format.kind == "gemma4"),
                      in_thought=in_thought, think_budget=budget if think or in_thought else None, stop=r.stop,
                      key=line)

    def _prompt(self, r: Request):
        d = self.defaults
        messages = r.messages
        if d.system is not None and not any(m["role"] in ("system", "developer") for m in messages):
            messages = [{"role": "system", "content": d.system}] + messages
        think = d.think if r.think is None else r.think
        text = self.format.render(messages, r.tools, thinking=think, preserve_thinking=r.keep_thinking)
        in_thought = self.format.kind == "gemma4" and ends_in_thought(text)  # the reply starts as thinking
        media = None
        if _has_media(messages):  # a video's <|video|> is written out as its timestamped frames
            text, media = self._load_media(messages, text)
        tokens = self.engine.tokenize(text)
        return tokens, self._shared(messages, r.tools, think, tokens), media, self._sampling(r), think, in_thought

    def _shared(self, messages: list[dict], tools, think: bool, tokens: list[int]) -> int | None:
        """Where the system turn ends: kept as a checkpoint so later lines reuse it even past the SWA window."""
        if messages[0]["role"] in ("system", "developer"):
            head = messages[:1]
        elif self.format.kind == "gemma4" and (tools or think):
            head = [{"role": "system", "content": ""}]  # renders the same system turn as none
        else:
            return None
        try:
            text = self.format.render(head, tools, thinking=think, add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - a template that cannot render a lone system turn: no checkpoint
            return None
        from gemma_cli.engine.kv import (
            common_prefix,  # the engine (llama_cpp): loaded by local runs only
        )

        n = common_prefix(self.engine.tokenize(text), tokens)
        return n if 0 < n < len(tokens) else None

    def _sampling(self, r: Request):
        from gemma_cli.engine.core import (
            request_sampling,  # the engine (llama_cpp): loaded by local runs only
        )

        return request_sampling(self.defaults.sampling, r)

    def _load_media(self, messages: list[dict], text: str) -> tuple[str, list]:
        if self.format.kind != "gemma4":
            raise CapabilityError("images and audio need a Gemma 4 model", "run the batch with a Gemma 4 --model")
        parts = prompt_order(messages)
        if self._media is None:
            self._media = MediaParts(keep=8)
        for kind in dict.fromkeys(p["type"] for p in parts):
            projector = self.engine.ensure_projector(kind)  # loaded on first use, with the engine's image budget
            self._media.rate = projector.sample_rate or self._media.rate
        return self._media.for_prompt(text, messages)

    def answer(self, line: Line, done) -> Answer:
        a = Answer(prompt_tokens=done.prompt_tokens + done.reused_tokens, cached_tokens=done.reused_tokens,
                   completion_tokens=done.generated_tokens, finish_reason=done.finish_reason, model=self.model)
        if self.format.kind == "gemma4":
            parsed = reply.parse(done.text, in_thought=done.job.in_thought)
            a.text, a.thinking = parsed.answer, parsed.thinking
            a.tool_calls = [{"name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]
        else:
            a.text = done.text
        r = line.request
        if (r.schema is not None or r.json_mode) and not a.tool_calls:
            check_json(a)
        return a


def _has_media(messages: list[dict]) -> bool:
    return any(media_parts(m.get("content")) for m in messages)
