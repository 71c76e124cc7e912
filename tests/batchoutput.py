"""An OpenAI batch output line, checked by the `openai` package's own types (pydantic models): an oracle
for its shape that owes nothing to gemma's code.

A line is `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}` (OpenAI's
Batch API documents it; the package has no type for the line itself, only for the body).
"""

from __future__ import annotations

from openai.types import BatchError
from openai.types.chat import ChatCompletion


def chat_completion(line: dict) -> ChatCompletion:
    """The body of a successful line, validated as the chat completion it must be."""
    assert set(line) == {"id", "custom_id", "response", "error"}, line
    assert line["error"] is None and isinstance(line["id"], str) and line["id"], line
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"} and response["status_code"] == 200, response
    assert isinstance(response["request_id"], str) and response["request_id"], response
    return ChatCompletion.model_validate(response["body"])


def batch_error(line: dict) -> BatchError:
    """The error of a failed line, validated as OpenAI's BatchError."""
    assert set(line) == {"id", "custom_id", "response", "error"}, line
    return BatchError.model_validate(line["error"])
