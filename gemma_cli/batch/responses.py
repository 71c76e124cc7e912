"""`gemma batch --endpoint URL --api responses`: a line's Chat Completions body sent as a Responses body
(`POST /v1/responses`, as Amazon Bedrock, OpenAI, vLLM, llama-server and `gemma serve` take it), and the
Response that comes back read as the chat.completion the batch records are made of.

    messages       system/developer/user messages as message items; an assistant's text as an output_text
                   message, its tool_calls as function_call items; tool messages as function_call_output
    parts          text -> input_text, image_url -> input_image, input_audio kept (gemma serve reads it)
    tools          {"type": "function", "function": {...}} -> the flat {"type": "function", "name", ...}
    tool_choice    a named one flattened the same way
    response_format  -> text.format;  max_tokens -> max_output_tokens
    thinking       chat_template_kwargs.enable_thinking / reasoning_effort -> reasoning.effort
    the rest       temperature, top_p, seed, stop, top_k, penalties, ... passed under their own names

What it cannot say (a video part) fails its line. Back: reasoning items -> reasoning_content, message items -> content, function_call items -> tool_calls,
status incomplete (max_output_tokens) -> finish_reason "length", usage input/output -> prompt/completion.
Nothing is stored (`store: false`).
"""

from __future__ import annotations

import json

from gemma_cli.errors import GemmaError

# Fields a batch line's body may hold that a Responses body does not take, or takes under another name
# (`n` > 1 and `logprobs` never get here: batch lines refuse them).
RENAMED = ("messages", "model", "max_tokens", "max_completion_tokens", "tools", "tool_choice", "response_format",
           "reasoning_effort", "chat_template_kwargs", "stream", "stream_options")


class Unsendable(GemmaError):
    """A line that cannot be said in a Responses body."""


def request_of(chat: dict) -> dict:
    """The Responses body for a Chat Completions body; `Unsendable` for what it cannot say."""
    body: dict = {"input": [item for m in _checked_messages(chat.get("messages")) for item in _items(m)],
                  "store": False}
    if chat.get("model"):
        body["model"] = chat["model"]
    limit = chat.get("max_completion_tokens", chat.get("max_tokens"))
    if limit is not None:
        body["max_output_tokens"] = limit
    if chat.get("tools"):
        body["tools"] = [_tool(t) for t in chat["tools"]]
    choice = chat.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        choice = {"type": "function", "name": choice["function"].get("name")}
    if choice is not None:
        body["tool_choice"] = choice
    fmt = _format(chat.get("response_format"))
    if fmt is not None:
        body["text"] = {"format": fmt}
    kwargs = dict(chat.get("chat_template_kwargs") or {})
    thinking = kwargs.get("enable_thinking")
    effort = chat.get("reasoning_effort") or ({True: "medium", False: "none"}.get(thinking) if thinking is not None
                                               else None)
    if effort is not None:
        body["reasoning"] = {"effort": effort}
    if set(kwargs) - {"enable_thinking"}:  # the template's own variables (llama.cpp, gemma serve): as they are
        body["chat_template_kwargs"] = kwargs
    for key, value in chat.items():
        if key not in RENAMED and value is not None:
            body[key] = value
    return body


def _checked_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise Unsendable('"messages" must be an array of objects', "see the OpenAI Batch API's request lines")
    return messages


def _items(message: dict) -> list[dict]:
    role = message.get("role")
    content = message.get("content")
    if role == "assistant":
        return _assistant(message)
    content = content if isinstance(content, str) else _parts(content or [], "input_text")
    if role == "tool":
        return [{"type": "function_call_output", "call_id": message.get("tool_call_id"), "output": content}]
    return [{"type": "message", "role": role, "content": content}]


def _assistant(message: dict) -> list:
    items: list = []
    content = message.get("content")
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or []
                                                          if isinstance(p, dict))
    if text.strip():
        items.append({"type": "message", "role": "assistant",
                      "content": [{"type": "output_text", "text": text}]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        arguments = fn.get("arguments", "{}")
        items.append({"type": "function_call", "call_id": call.get("id"), "name": fn.get("name"),
                      "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)})
    return items


def _parts(parts, text_type: str) -> list[dict]:
    if not isinstance(parts, list):
        raise Unsendable("a message's content must be a string or an array of parts", "see the OpenAI Batch API's request lines")
    out = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            out.append({"type": text_type, "text": part.get("text", "")})
        elif kind == "image_url":
            url = part.get("image_url")
            out.append({"type": "input_image", "image_url": url.get("url") if isinstance(url, dict) else url})
        elif kind == "input_audio":
            out.append(part)
        else:
            raise Unsendable(f"a {kind!r} content part cannot be sent with --api responses",
                             "send text, images and audio, or use --api chat")
    return out


def _tool(tool: dict) -> dict:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if tool.get("type") != "function" or not isinstance(fn, dict):
        return tool
    flat = {"type": "function", "name": fn.get("name")}
    for key in ("description", "parameters", "strict"):
        if fn.get(key) is not None:
            flat[key] = fn[key]
    return flat


def _format(response_format):
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        fmt = {"type": "json_schema", "name": spec.get("name") or "answer", "schema": spec.get("schema")}
        if spec.get("strict") is not None:
            fmt["strict"] = spec["strict"]
        return fmt
    if kind == "json_object":
        return {"type": "json_object"}
    return None


# ---------------------------------------------------------------- the reply


def completion_of(response: dict) -> dict:
    """The chat.completion a Response says; ValueError/KeyError/TypeError for what is not a Response."""
    if response.get("status") == "failed":
        error = response.get("error") or {}
        raise ValueError(f"the response failed: {error.get('message') or error}")
    text, thinking, calls = [], [], []
    for item in response["output"]:
        kind = item.get("type")
        if kind == "message":
            text += [p.get("text", "") for p in item.get("content") or [] if p.get("type") == "output_text"]
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            thinking += [p.get("text", "") for p in parts]
        elif kind == "function_call":
            calls.append({"id": item.get("call_id") or item.get("id"), "type": "function",
                          "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}})
    message: dict = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    details = response.get("incomplete_details") or {}
    if response.get("status") == "incomplete":
        finish = "content_filter" if details.get("reason") == "content_filter" else "length"
    else:
        finish = "tool_calls" if calls else "stop"
    usage = response.get("usage") or {}
    prompt, generated = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    cached = int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0)
    return {"id": response.get("id"), "object": "chat.completion", "created": response.get("created_at"),
            "model": response.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": generated,
                      "total_tokens": int(usage.get("total_tokens") or prompt + generated),
                      "prompt_tokens_details": {"cached_tokens": cached}}}
