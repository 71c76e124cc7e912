"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) over the Chat Completions request.

`to_chat` rewrites a Messages body as the Chat Completions body that `chat.read_request` reads (one
request model: sampling, tools, tool_choice, thinking, media are read there only): `system` becomes
the system message, `tool_use` blocks the assistant's `tool_calls`, `tool_result` blocks `tool`
messages, base64 `image` blocks data: URLs, `thinking: {type: enabled, budget_tokens}` Gemma 4's
thinking with the think budget. `Writer` turns the reply events of `replies.Replies` into the
Message object and, streamed, into Anthropic's events:

    message_start, then per block content_block_start, content_block_delta..., content_block_stop
    (thinking: thinking_delta then signature_delta; text: text_delta; tool_use: input_json_delta),
    message_delta (stop_reason, usage), message_stop.

Errors are Anthropic's shape: `{"type": "error", "error": {"type": ..., "message": ...}}`.
What Claude Code sends besides (`context_management`, `output_config`, `metadata`, `cache_control`,
`thinking: {type: adaptive}`, `?beta=true`) is accepted; `max_tokens` past what the context leaves is
capped by the engine, not refused.
"""

from __future__ import annotations

import json

from gemma_cli.engine.parallel import Finished
from gemma_cli.format import reply
from gemma_cli.serve.chat import ApiError, bad
from gemma_cli.serve.responses import new_id

PASSED = ("temperature", "top_p", "top_k", "stream", "grammar", "seed", "min_p", "repeat_penalty")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               529: "overloaded_error"}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def error_body(e: ApiError) -> dict:
    """An `ApiError` in Anthropic's error shape."""
    kind = ERROR_TYPES.get(e.status, "api_error" if e.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": e.message}}


# ---------------------------------------------------------------- the request


def to_chat(body, count_only: bool = False) -> dict:
    """The Chat Completions body of a Messages body; an `ApiError` names the Messages field at fault."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    messages: list[dict] = []
    system = body.get("system")
    if system is not None:
        text = _system(system)
        if text:
            messages.append({"role": "system", "content": text})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty array of messages", "messages")
    calls: set[str] = set()
    for i, m in enumerate(raw):
        messages += _message(m, f"messages[{i}]", calls)
    chat: dict = {"messages": messages}
    if not count_only:
        value = body.get("max_tokens")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("'max_tokens' is required: a positive integer", "max_tokens")
        chat["max_tokens"] = value  # the engine caps it at what the context leaves
    for key in PASSED:
        if body.get(key) is not None:
            chat[key] = body[key]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise bad("'stop_sequences' must be an array of non-empty strings", "stop_sequences")
        if stops:
            chat["stop"] = stops
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    _tool_choice(body.get("tool_choice"), chat)
    _thinking(body.get("thinking"), chat)
    return chat


def _system(value, where: str = "system") -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise bad(f"'{where}' must be a string or an array of text blocks", where)
    texts = []
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise bad(f"{where}[{i}] must be a text block ({{\"type\": \"text\", \"text\": …}})", f"{where}[{i}]")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _message(m, where: str, calls: set[str]) -> list[dict]:
    if not isinstance(m, dict):
        raise bad(f"{where} must be an object", where)
    role = m.get("role")
    if role == "system":  # Claude Code (2.1) sends its environment as a system message after the user's first
        return [{"role": "system", "content": _system(m.get("content"), f"{where}.content")}]
    if role not in ("user", "assistant"):
        raise bad(f"{where}.role must be user, assistant or system", f"{where}.role")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or an array of content blocks", f"{where}.content")
    parts: list[dict] = []
    tool_calls: list[dict] = []
    results: list[dict] = []  # tool messages, before the user's own text (as the turn order has them)
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise bad(f"{at}.text must be a string", f"{at}.text")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise bad(f"{at}: a tool_use block needs 'id' and 'name' strings", at)
            tool_input = block.get("input", {})
            if not isinstance(tool_input, dict):
                raise bad(f"{at}.input must be an object", f"{at}.input")
            tool_calls.append({"id": block["id"], "type": "function",
                               "function": {"name": block["name"], "arguments": json.dumps(tool_input)}})
            calls.add(block["id"])
        elif kind == "tool_result" and role == "user":
            results.append(_result(block, at, calls))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier thinking is not sent back into the prompt (the template drops it too)
        else:
            allowed = "text, image, tool_use, thinking" if role == "assistant" else "text, image, tool_result"
            raise bad(f"{at}.type {json.dumps(kind)[:40]} is not supported in a {role} message ({allowed})",
                      f"{at}.type")
    out = results
    if role == "assistant":
        message: dict = {"role": "assistant", "content": parts or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if parts or tool_calls:
            out.append(message)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image(block: dict, at: str) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad(f"{at}.source must be an object", f"{at}.source")
    if source.get("type") != "base64":
        raise bad(f"{at}: only base64 image sources are read (the server does not download URLs or files)",
                  f"{at}.source.type")
    media_type, data = source.get("media_type"), source.get("data")
    if media_type not in IMAGE_TYPES or not isinstance(data, str) or not data:
        raise bad(f"{at}: a base64 image needs media_type ({', '.join(IMAGE_TYPES)}) and data", f"{at}.source")
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}


def _result(block: dict, at: str, calls: set[str]) -> dict:
    use = block.get("tool_use_id")
    if use not in calls:
        raise bad(f"{at}: tool_result for tool_use_id {json.dumps(use)[:60]}, which no tool_use block before it has",
                  f"{at}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        parts = []
        for k, inner in enumerate(content):
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text" and isinstance(inner.get("text"), str):
                parts.append({"type": "text", "text": inner["text"]})
            elif kind == "image":
                parts.append(_image(inner, f"{at}.content[{k}]"))
            else:
                raise bad(f"{at}.content[{k}] must be a text or image block", f"{at}.content[{k}]")
        if all(p["type"] == "text" for p in parts):
            content = "\n".join(p["text"] for p in parts)
        else:
            content = parts
    elif not isinstance(content, str):
        raise bad(f"{at}.content must be a string or an array of blocks", f"{at}.content")
    if block.get("is_error"):
        if isinstance(content, str):
            content = f"Error: {content}"
        else:
            content = [{"type": "text", "text": "Error:"}, *content]
    return {"role": "tool", "tool_call_id": use, "content": content}


def _tools(value) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("'tools' must be an array", "tools")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad(f"tools[{i}] must be an object with a 'name'", f"tools[{i}]")
        if tool.get("type") not in (None, "custom"):
            continue  # Anthropic's server tools (web_search_…, code_execution_…) this server does not have
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad(f"tools[{i}].input_schema must be a JSON Schema object", f"tools[{i}].input_schema")
        fn = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        tools.append({"type": "function", "function": fn})
    return tools


def _tool_choice(value, chat: dict) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(value.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": value["name"]}}
    else:
        raise bad("'tool_choice' must be {\"type\": auto | any | none} or {\"type\": \"tool\", \"name\": …}",
                  "tool_choice")
    if value.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _thinking(value, chat: dict) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "disabled":
        chat["chat_template_kwargs"] = {"enable_thinking": False}
    elif kind == "adaptive":
        chat["chat_template_kwargs"] = {"enable_thinking": True}
    elif kind == "enabled":
        budget = value.get("budget_tokens")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise bad("'thinking.budget_tokens' must be a non-negative integer", "thinking.budget_tokens")
        chat["chat_template_kwargs"] = {"enable_thinking": True}
        if budget is not None:
            chat["think_budget"] = budget
    else:
        raise bad("'thinking.type' must be enabled, disabled or adaptive", "thinking.type")


# ---------------------------------------------------------------- the response


def usage(done: Finished | None) -> dict:
    if done is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {"input_tokens": done.prompt_tokens, "cache_read_input_tokens": done.reused_tokens,
            "cache_creation_input_tokens": 0, "output_tokens": done.generated_tokens}


class Writer:
    """The Message object of one request, built from reply events; `events` are the streamed ones."""

    def __init__(self, model: str):
        self.message = {"id": new_id("msg"), "type": "message", "role": "assistant", "model": model, "content": [],
                        "stop_reason": None, "stop_sequence": None, "usage": usage(None)}
        self.open: dict | None = None  # the thinking or text block being written
        self.calls = 0
        self.prompt_tokens = 0  # the prompt's length, for message_start's usage

    @property
    def result(self) -> dict:
        return self.message

    def start(self) -> list[dict]:
        message = dict(self.message, content=[], usage={"input_tokens": self.prompt_tokens, "output_tokens": 0})
        return [{"type": "message_start", "message": message}]

    def feed(self, events) -> list[dict]:
        out: list[dict] = []
        for event in events:
            if isinstance(event, reply.Thinking) and event.text:
                out += self._text("thinking", event.text)
            elif isinstance(event, reply.Answer) and event.text:
                out += self._text("text", event.text)
            elif isinstance(event, reply.ToolCall):
                out += self._close()
                out += self._call(event)
        return out

    def _text(self, kind: str, text: str) -> list[dict]:
        out: list[dict] = []
        if self.open is None or self.open["type"] != kind:
            out += self._close()
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else \
                {"type": "text", "text": ""}
            self.message["content"].append(block)
            self.open = block
            out.append({"type": "content_block_start", "index": len(self.message["content"]) - 1,
                        "content_block": dict(block)})
        self.open[kind] += text
        delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta",
                                                                                           "text": text}
        out.append({"type": "content_block_delta", "index": len(self.message["content"]) - 1, "delta": delta})
        return out

    def _close(self) -> list[dict]:
        block, self.open = self.open, None
        if block is None:
            return []
        index = len(self.message["content"]) - 1
        out = []
        if block["type"] == "thinking":  # no signature: the thought is not sent back into prompts anyway
            out.append({"type": "content_block_delta", "index": index,
                        "delta": {"type": "signature_delta", "signature": ""}})
        return out + [{"type": "content_block_stop", "index": index}]

    def _call(self, call: reply.ToolCall) -> list[dict]:
        block = {"type": "tool_use", "id": new_id("toolu"), "name": call.name,
                 "input": call.arguments if isinstance(call.arguments, dict) else {"value": call.arguments}}
        self.message["content"].append(block)
        self.calls += 1
        index = len(self.message["content"]) - 1
        return [{"type": "content_block_start", "index": index, "content_block": dict(block, input={})},
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"], ensure_ascii=False)}},
                {"type": "content_block_stop", "index": index}]

    def finish(self, done: Finished, stop_hit: str | None) -> list[dict]:
        """The closing events: the open block stopped, message_delta (stop_reason, usage), message_stop."""
        out = self._close()
        if done.error is not None:
            return out + [{"type": "error", "error": {"type": "api_error", "message": done.error.message}}]
        if self.calls:
            reason = "tool_use"
        elif done.finish_reason == "length":
            reason = "max_tokens"
        elif stop_hit is not None:
            reason = "stop_sequence"
        else:
            reason = "end_turn"
        self.message["stop_reason"] = reason
        self.message["stop_sequence"] = stop_hit if reason == "stop_sequence" else None
        self.message["usage"] = usage(done)
        return out + [{"type": "message_delta", "delta": {"stop_reason": reason,
                                                          "stop_sequence": self.message["stop_sequence"]},
                       "usage": usage(done)},
                      {"type": "message_stop"}]


def sse(event: dict) -> bytes:
    return (f"event: {event['type']}\ndata: " + json.dumps(event, ensure_ascii=False) + "\n\n").encode("utf-8")
