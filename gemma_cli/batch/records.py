"""Result records in the input's form: simple {"id", "answer", ...} or the OpenAI Batch API's
{"id", "custom_id", "response": {"status_code", "request_id", "body": <chat.completion>}, "error"}."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from gemma_cli.batch.lines import Failure, Line
from gemma_cli.errors import GemmaError

@dataclass
class Answer:
    """What came back for one line, whichever way it ran."""

    text: str = ""
    thinking: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # {"name", "arguments"}
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    completion: dict | None = None  # an endpoint's chat.completion, kept as it came
    model: str = ""


def record(line: Line, answer: Answer | None = None, failure: Failure | None = None) -> dict:
    """The output line for `line`, in its form."""
    if line.form == "openai":
        return _openai_record(line, answer, failure)
    if failure is not None:
        return {"id": line.id, **_line_of(line), "answer": None, "thinking": None, "tool_calls": [], "usage": None,
                "finish_reason": None, "error": _error(failure, line)}
    usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}
    if answer.cached_tokens:
        usage["cached_tokens"] = answer.cached_tokens
    return {"id": line.id, **_line_of(line), "answer": answer.text, "thinking": answer.thinking or None, "tool_calls": answer.tool_calls,
            "usage": usage, "finish_reason": answer.finish_reason, "error": None}


def _line_of(line: Line) -> dict:
    """A line without an id is known by its number: {"id": null, "line": N} (never a made-up id that
    could be a user's)."""
    return {"line": line.number} if line.id is None else {}


def _error(failure: Failure, line: Line) -> dict:
    out = {"code": failure.code, "message": failure.message, "line": line.number}
    if failure.hint:
        out["hint"] = failure.hint
    return out


def _openai_record(line: Line, answer: Answer | None, failure: Failure | None) -> dict:
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    out = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": line.id, **_line_of(line)}
    if failure is not None:
        response = None
        if failure.status is not None:
            response = {"status_code": failure.status, "request_id": request_id, "body": failure.body}
        return {**out, "response": response, "error": _error(failure, line)}
    body = answer.completion or completion(answer)
    return {**out, "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}


def completion(answer: Answer) -> dict:
    """An OpenAI chat.completion object for a local answer."""
    message: dict = {"role": "assistant", "content": answer.text if answer.text or not answer.tool_calls else None}
    if answer.thinking:
        message["reasoning_content"] = answer.thinking
    finish = answer.finish_reason
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in answer.tool_calls
        ]
        finish = "tool_calls" if finish == "stop" else finish
    usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}
    if answer.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": answer.cached_tokens}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": answer.model, "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage}


def check_json(a: Answer) -> None:
    """A constrained answer must be JSON: a cut one (max_tokens) is a grammar failure, not a result."""
    try:
        json.loads(a.text)
    except json.JSONDecodeError:
        cut = " (cut at max_tokens)" if a.finish_reason == "length" else ""
        err = GemmaError(f"the answer is not complete JSON{cut}", "raise max_tokens for this line")
        err.code = "grammar"
        raise err from None
