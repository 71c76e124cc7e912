"""OpenAI's Responses API (`POST /v1/responses`) over the Chat Completions request.

`to_chat` rewrites a Responses body as the Chat Completions body that `chat.read_request` reads
(one request model: sampling, tools, tool_choice, thinking, JSON schemas and media are read there
only); `Writer` turns the reply events of `replies.Replies` into the Response object and, streamed,
into the documented event sequence:

    response.created, response.in_progress,
    per output item: response.output_item.added,
        reasoning: response.content_part.added (reasoning_text), response.reasoning_text.delta...,
                   response.reasoning_text.done, response.content_part.done; when the request asks for
                   `reasoning.summary`, the thought is its own summary as well (Gemma writes none):
                   response.reasoning_summary_part.added after the content part, a
                   response.reasoning_summary_text.delta after each reasoning_text.delta, and
                   response.reasoning_summary_text.done, response.reasoning_summary_part.done before the item's done
        message:   response.content_part.added (output_text), response.output_text.delta...,
                   response.output_text.done, response.content_part.done
        function_call: response.function_call_arguments.delta, response.function_call_arguments.done
    response.output_item.done; then response.completed (response.incomplete at max_output_tokens).

Nothing is stored: `store: true`, `previous_response_id`, `conversation` and `background` are
refused with a 400 that says so; what Codex CLI sends on every request (`store: false`, `include`,
`prompt_cache_key`, `client_metadata`, `reasoning.summary`, ...) is accepted.
"""

from __future__ import annotations

import json
import time
import uuid

from gemma_cli.engine.parallel import Finished
from gemma_cli.format import reply
from gemma_cli.serve.chat import ApiError, bad

# Chat Completions fields a Responses body may carry under the same name (llama.cpp's extensions included).
PASSED = ("temperature", "top_p", "top_k", "min_p", "seed", "grammar", "parallel_tool_calls", "presence_penalty",
          "frequency_penalty", "repeat_penalty", "logit_bias", "chat_template_kwargs", "think_budget", "stop", "stream")
NOT_STORED = {
    "previous_response_id": "previous_response_id is not supported: this server keeps no responses; send the "
                            "whole conversation in 'input' (with store: false)",
    "conversation": "conversation is not supported: this server keeps no conversations; send the whole "
                    "conversation in 'input'",
}
EFFORTS = {"none": "none", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------- the request


def to_chat(body) -> dict:
    """The Chat Completions body of a Responses body; an `ApiError` names the Responses field at fault."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for key, message in NOT_STORED.items():
        if body.get(key) not in (None, ""):
            raise bad(message, key, "unsupported_parameter")
    if body.get("store") is True:
        raise bad("store: true is not supported: this server keeps no responses (send store: false)", "store",
                  "unsupported_parameter")
    if body.get("background") is True:
        raise bad("background: true is not supported: this server answers while the request is open", "background",
                  "unsupported_parameter")
    include = body.get("include")
    if include is not None and not (isinstance(include, list) and all(isinstance(i, str) for i in include)):
        raise bad("'include' must be an array of strings", "include")
    if body.get("top_logprobs") or "message.output_text.logprobs" in (include or []):
        raise bad("logprobs are not returned on /v1/responses by this server", "top_logprobs",
                  "unsupported_parameter")
    messages: list[dict] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad("'instructions' must be a string", "instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    messages += _messages(body.get("input"))
    chat: dict = {"messages": messages}
    for key in PASSED:
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        value = body["max_output_tokens"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
        chat["max_tokens"] = value
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None:
        chat["tool_choice"] = choice
    effort = _effort(body.get("reasoning"))
    if effort is not None and "chat_template_kwargs" not in chat:
        chat["reasoning_effort"] = effort
    response_format = _format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    return chat


def _messages(value) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad("'input' must be a string or a non-empty array of input items", "input")
    out: list[dict] = []
    calls: set[str] = set()  # call_ids of the function_call items so far
    previous = None  # what the item before was: a message's role or an item type
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{where} must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad(f"{where}.role must be user, assistant, system or developer", f"{where}.role")
            out.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
                raise bad(f"{where}: a function_call needs 'call_id' and 'name' strings", where)
            arguments = item.get("arguments", "{}")
            if not isinstance(arguments, str):
                raise bad(f"{where}.arguments must be a JSON string", f"{where}.arguments")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            if previous in ("assistant", "function_call"):  # calls right after the answer they belong to
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            calls.add(call_id)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in calls:
                raise bad(f"{where}: function_call_output for call_id {json.dumps(call_id)[:60]}, which no "
                          "function_call item before it has", f"{where}.call_id")
            output = item.get("output")
            if isinstance(output, list):
                output = _content(output, where)
            elif not isinstance(output, str):
                raise bad(f"{where}.output must be a string or an array of content parts", f"{where}.output")
            out.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # earlier thinking is not sent back into the prompt (the template drops it too)
        elif kind == "item_reference":
            raise bad(f"{where}: item_reference is not supported: this server keeps no items; send the item itself",
                      f"{where}.type", "unsupported_parameter")
        else:
            raise bad(f"{where}.type {json.dumps(kind)[:40]} is not supported (message, function_call, "
                      "function_call_output, reasoning)", f"{where}.type")
        previous = item.get("role") if kind == "message" else kind
    return out


def _content(value, where: str):
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise bad(f"{where}.content must be a string or an array of content parts", f"{where}.content")
    parts = []
    for j, part in enumerate(value):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text"):
            if not isinstance(part.get("text"), str):
                raise bad(f"{at}.text must be a string", f"{at}.text")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise bad(f"{at}: input_image needs 'image_url' (a data: URL); file_id is not supported", at,
                          "invalid_media")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "input_audio":
            audio = part.get("input_audio")
            parts.append({"type": "input_audio", "input_audio": audio})
        else:
            raise bad(f"{at}.type {json.dumps(kind)[:40]} is not supported (input_text, output_text, input_image)",
                      f"{at}.type")
    return parts


def _tools(value) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("'tools' must be an array", "tools")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise bad(f"tools[{i}] must be an object", f"tools[{i}]")
        if tool.get("type") != "function":
            continue  # hosted tools (web_search, file_search, ...) this server does not have: never offered
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise bad(f"tools[{i}] needs a 'name' (Responses' function tools are flat: "
                      "{\"type\": \"function\", \"name\": …, \"parameters\": {…}})", f"tools[{i}].name")
        fn = {"name": name}
        if tool.get("description") is not None:
            fn["description"] = tool["description"]
        if tool.get("parameters") is not None:
            fn["parameters"] = tool["parameters"]
        tools.append({"type": "function", "function": fn})
    return tools


def _tool_choice(value):
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    raise bad("'tool_choice' must be auto, none, required or {\"type\": \"function\", \"name\": …}", "tool_choice")


def _effort(value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("'reasoning' must be an object", "reasoning")
    effort = value.get("effort")
    if effort is None:
        return None
    if effort not in EFFORTS:
        raise bad("'reasoning.effort' must be none, minimal, low, medium, high or xhigh", "reasoning.effort")
    return EFFORTS[effort]


def _format(value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("'text' must be an object", "text")
    fmt = value.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise bad("text.format json_schema needs a 'schema' object", "text.format.schema")
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name") or "output", "schema": fmt["schema"],
                                                        "strict": fmt.get("strict")}}
    raise bad("'text.format.type' must be text, json_object or json_schema", "text.format")


# ---------------------------------------------------------------- the response


def usage(done: Finished) -> dict:
    prompt = done.prompt_tokens + done.reused_tokens
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": done.reused_tokens, "cache_write_tokens": 0},
            "output_tokens": done.generated_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + done.generated_tokens}


class Writer:
    """The Response object of one request, built from reply events; `events` are the streamed ones."""

    def __init__(self, model: str, body: dict):
        self.response = {
            "id": new_id("resp"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "model": model, "output": [], "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "metadata": body.get("metadata") or {},
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"],
            "max_output_tokens": body.get("max_output_tokens"), "reasoning": body.get("reasoning"),
            "text": body.get("text") or {"format": {"type": "text"}}, "store": False, "usage": None,
        }
        self.seq = 0
        self.open: dict | None = None  # the output item being written (reasoning or message)
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        self.summary = reasoning.get("summary") in ("auto", "concise", "detailed")  # LangChain, Codex stream it
        self.prompt_tokens = 0

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _snapshot(self) -> dict:
        return json.loads(json.dumps(self.response))

    def start(self) -> list[dict]:
        return [self._event("response.created", response=self._snapshot()),
                self._event("response.in_progress", response=self._snapshot())]

    def feed(self, events) -> list[dict]:
        out: list[dict] = []
        for event in events:
            if isinstance(event, reply.Thinking) and event.text:
                out += self._text("reasoning", event.text)
            elif isinstance(event, reply.Answer) and event.text:
                out += self._text("message", event.text)
            elif isinstance(event, reply.ToolCall):
                out += self._close()
                out += self._call(event)
        return out

    def _text(self, kind: str, text: str) -> list[dict]:
        out: list[dict] = []
        if self.open is None or self.open["type"] != kind:
            out += self._close()
            out += self._add(kind)
        item = self.open
        index = len(self.response["output"]) - 1
        part = item["content"][0]
        part["text"] += text
        delta = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        out.append(self._event(delta, item_id=item["id"], output_index=index, content_index=0, delta=text, **extra))
        if kind == "reasoning" and self.summary:
            item["summary"][0]["text"] += text
            out.append(self._event("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                                   summary_index=0, delta=text))
        return out

    def _add(self, kind: str) -> list[dict]:
        if kind == "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.response["output"].append(item)
        index = len(self.response["output"]) - 1
        out = [self._event("response.output_item.added", output_index=index, item=json.loads(json.dumps(item)))]
        item["content"].append(part)
        self.open = item
        out.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                               content_index=0, part=dict(part)))
        if kind == "reasoning" and self.summary:
            item["summary"].append({"type": "summary_text", "text": ""})
            out.append(self._event("response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                                   summary_index=0, part=dict(item["summary"][0])))
        return out

    def _close(self, status: str = "completed") -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = len(self.response["output"]) - 1
        part = item["content"][0]
        done = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
        extra = {} if item["type"] == "reasoning" else {"logprobs": []}
        item["status"] = status
        out = [self._event(done, item_id=item["id"], output_index=index, content_index=0, text=part["text"], **extra),
               self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                           part=dict(part))]
        if item["type"] == "reasoning" and item["summary"]:
            summary = item["summary"][0]
            out += [self._event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                                summary_index=0, text=summary["text"]),
                    self._event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                                summary_index=0, part=dict(summary))]
        return out + [self._event("response.output_item.done", output_index=index, item=json.loads(json.dumps(item)))]

    def _call(self, call: reply.ToolCall) -> list[dict]:
        arguments = json.dumps(call.arguments, ensure_ascii=False)
        item = {"id": new_id("fc"), "type": "function_call", "call_id": new_id("call"), "name": call.name,
                "arguments": "", "status": "in_progress"}
        self.response["output"].append(item)
        index = len(self.response["output"]) - 1
        out = [self._event("response.output_item.added", output_index=index, item=dict(item)),
               self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                           delta=arguments)]
        item["arguments"], item["status"] = arguments, "completed"
        out += [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                            name=call.name, arguments=arguments),
                self._event("response.output_item.done", output_index=index, item=dict(item))]
        return out

    @property
    def result(self) -> dict:
        return self.response

    def finish(self, done: Finished, stop_hit: str | None = None) -> list[dict]:
        """The closing events: the open item done, then response.completed (or .incomplete, or an error)."""
        if done.error is not None:
            out = self._close("incomplete")
            self.response["status"] = "failed"
            self.response["error"] = {"code": "server_error", "message": done.error.message}
            return out + [self._event("error", code="server_error", message=done.error.message, param=None),
                          self._event("response.failed", response=self._snapshot())]
        incomplete = done.finish_reason == "length"
        out = self._close("incomplete" if incomplete else "completed")
        self.response["usage"] = usage(done)
        if incomplete:
            self.response["status"] = "incomplete"
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
            return out + [self._event("response.incomplete", response=self._snapshot())]
        self.response["status"] = "completed"
        self.response["completed_at"] = int(time.time())
        return out + [self._event("response.completed", response=self._snapshot())]


def sse(event: dict) -> bytes:
    return (f"event: {event['type']}\ndata: " + json.dumps(event, ensure_ascii=False) + "\n\n").encode("utf-8")


def error_body(e: ApiError) -> dict:
    return e.body()
