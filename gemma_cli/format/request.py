"""The OpenAI request reader: one Chat Completions body, checked field by field, into a `ChatRequest`.

Pure: no engine, no server. `gemma batch` turns a `RequestError` into an error record, `gemma serve`
into an OpenAI 400 naming `param`. The Responses and Messages APIs translate their bodies into the same
`ChatRequest` (build one directly, or a Chat Completions body for `read_chat`), so every API honours
or refuses the same things.

The field table below is the one place that says what a body field does:
- `SUPPORTED`: read onto the `ChatRequest` (sampling ones through `SAMPLING`);
- `IGNORED`: harmless to drop (bookkeeping that does not change the answer);
- `REFUSED`: would change the answer and the engine cannot honour it: a value other than its neutral
  one is an error naming the field, never silently ignored.
To support a refused field: move it to `SUPPORTED` (a sampling number: one line in `SAMPLING`), add its
field to `ChatRequest` and read it in `read_chat`. Unknown fields are ignored by a loose reader
(`strict=False`, the server: clients send extras) and refused by a strict one (batch lines).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from gemma_cli.errors import GemmaError
from gemma_cli.format.call_grammar import ToolChoiceError, call_grammar
from gemma_cli.format.conversation import ROLES, normalize_message

# Sampling numbers: body field -> (type, lowest, highest). One line here adds one (plus its field on
# engine.Sampling, which both the server and the batch runner apply by name). min_p and repeat_penalty
# are llama-server's fields; the penalties count the last 64 generated tokens (llama.cpp's window).
SAMPLING: dict[str, tuple[type, float | None, float | None]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, None),
    "seed": (int, -(2 ** 63), 2 ** 64 - 1),  # 64 bits, signed or not (llama.cpp keeps the low 32)
    "min_p": (float, 0.0, 1.0),
    "presence_penalty": (float, -2.0, 2.0),
    "frequency_penalty": (float, -2.0, 2.0),
    "repeat_penalty": (float, 0.0, None),  # above 0 (checked in read_sampling); 1 is off
}
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
SUPPORTED = {"messages", "model", "tools", "tool_choice", "parallel_tool_calls", "response_format", "grammar",
             "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options", "chat_template_kwargs",
             "reasoning_effort", "logit_bias", "logprobs", "top_logprobs", "n", *SAMPLING}
IGNORED = {"store", "metadata", "user", "service_tier", "prompt_cache_key", "safety_identifier"}
# Refused unless neutral: field -> (values that change nothing, the message when another is given).
REFUSED: dict[str, tuple[tuple, str | None]] = {
    "functions": (([],), "the legacy 'functions' field is not supported; send them as 'tools'"),
    "function_call": (("auto", "none"), "the legacy 'function_call' field is not supported; use 'tool_choice'"),
    "modalities": ((["text"],), None),
    "audio": ((), None),
    "prediction": ((), None),
    "web_search_options": ((), None),
}
NEEDS_CONTENT = ("system", "developer", "user", "tool")  # an assistant turn may be only tool calls
OPENAI_PARTS = ("text", "image_url", "input_audio", "video_url")  # content part types a client may send
LOCAL_PARTS = ("image", "audio", "video")  # gemma's own parts ({"type", "path" | "url"}): local runs only
_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number", dict: "an object",
          list: "a list"}


class RequestError(GemmaError):
    """A request field that cannot be read or honoured. `param` names it (`messages[0].content[1]`)."""

    def __init__(self, message: str, param: str | None = None, hint: str | None = None, code: str | None = None):
        super().__init__(message, hint)
        self.param = param
        self.code = code


@dataclass
class ChatRequest:
    """One chat request, read and checked: what every API (Chat Completions, Responses, Messages, batch
    lines) hands the job runners.

    messages: OpenAI chat messages, each normalized (`conversation.normalize_message`): roles system,
        developer, user, assistant, tool; content a string or parts `{"type": "text", "text"}`,
        `{"type": "image" | "video", "url" | "path"}`, `{"type": "audio", "data", "format"}` or `"path"`;
        assistant `tool_calls` with `function.arguments` as a mapping where it parsed.
    tools: function tools `{"type": "function", "function": {"name", "description", "parameters"}}`, or
        None. `tool_choice "none"` leaves None here.
    tool_choice: "auto" (the model decides), "none", or "required": the reply is a call (to `tool_name`
        only, when the request named a function), forced by `call_grammar()`.
    tool_name: the one function a "required" choice names (None: any declared tool).
    parallel_tool_calls: as given (None: not said). False: at most one call (a forced reply is one call;
        otherwise calls after the first are dropped from the answer).
    think: thinking on or off; None: the caller's default (`--think`).
    keep_thinking: the template's preserve_thinking (earlier turns keep their thought).
    think_budget: close the thought after this many tokens; None: the caller's default.
    schema / json_mode: constrain the answer to this JSON Schema / to any JSON object.
    grammar: llama.cpp's GBNF for the whole reply (never together with schema or json_mode).
    stop: strings that end the answer (not included), up to 4.
    max_tokens: the answer's limit; None: the caller's default.
    temperature, top_p, top_k, seed, min_p, presence_penalty, frequency_penalty, repeat_penalty, logit_bias:
        sampling given in the request; None: the caller's default (`sampling()` gives the ones set, by
        their `engine.Sampling` names; logit_bias maps token ids to biases from -100 to 100).
    logprobs: None, or each generated token's log probability with this many `top_logprobs` (0..20).
    n: how many choices (parallel sequences sharing the prompt).
    stream / include_usage: send chunks as they come / end the stream with a usage chunk.
    body: the body as given, when it came as a Chat Completions body (batch sends it on as is).
    """

    messages: list[dict]
    tools: list[dict] | None = None
    tool_choice: str = "auto"
    tool_name: str | None = None
    parallel_tool_calls: bool | None = None
    think: bool | None = None
    keep_thinking: bool = False
    think_budget: int | None = None
    schema: dict | None = None
    json_mode: bool = False
    grammar: str | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    body: dict | None = field(default=None, repr=False)

    def sampling(self) -> dict:
        """The sampling fields this request set (names as on `engine.Sampling`)."""
        out = {name: getattr(self, name) for name in SAMPLING if getattr(self, name) is not None}
        if self.logit_bias:
            out["logit_bias"] = dict(self.logit_bias)
        return out

    def call_grammar(self) -> str | None:
        """With tool_choice "required": the GBNF that makes the reply a call (see format.call_grammar)."""
        if self.tool_choice != "required":
            return None
        return call_grammar(self.tools or [], self.tool_name, parallel=self.parallel_tool_calls is not False)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # "\ud800": maybe half a pair, checked when present


def read_json(raw: bytes, *, lone_surrogates: bool = False):
    """JSON text (a request body, a batch line) as Python data. A ValueError completes "the body …": it "is not
    valid JSON (…)", "is JSON nested too deeply", or, unless `lone_surrogates`, "has a lone UTF-16 surrogate
    escape" (valid JSON, but text that no tokenizer can encode; a batch line's id may have one)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError("is JSON nested too deeply") from None
    if not lone_surrogates and _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("has a lone UTF-16 surrogate escape (\\ud800-\\udfff) in a string; send UTF-8 "
                             "text, or a surrogate pair") from None
    return data


def read_chat(body, *, strict: bool = False, local_parts: bool = False) -> ChatRequest:
    """A Chat Completions body into a ChatRequest, or a RequestError naming the first bad field.

    strict: refuse fields the table does not know (batch lines) instead of ignoring them (the server).
    local_parts: accept gemma's own `{"type": "image", "path": …}` parts (a local run of the user's files).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    given = {k: v for k, v in body.items() if v is not None}  # a null field is an absent one
    refuse_fields(given, strict)
    req = ChatRequest(read_messages(given.get("messages"), local_parts=local_parts), body=body)
    req.stream = bool(typed(given, "stream", bool))
    options = typed(given, "stream_options", dict)
    req.include_usage = bool(options and options.get("include_usage"))
    req.tools = read_tools(given.get("tools"))
    req.tool_choice, req.tool_name = read_tool_choice(given.get("tool_choice"), req.tools)
    if req.tool_choice == "none":
        req.tools = None
    req.parallel_tool_calls = typed(given, "parallel_tool_calls", bool)
    req.think = read_thinking(given)
    req.keep_thinking = read_keep_thinking(given)
    req.schema, req.json_mode = read_response_format(given.get("response_format"))
    req.grammar = typed(given, "grammar", str) or None
    if req.grammar and (req.schema is not None or req.json_mode):
        raise RequestError('give either "grammar" or a JSON response_format, not both', "grammar")
    if req.tool_choice == "required" and (req.grammar or req.schema is not None or req.json_mode):
        raise RequestError("a forced tool call (tool_choice) cannot also follow \"grammar\" or a JSON response_format",
                           "tool_choice")
    req.stop = read_stop(given.get("stop"))
    key = "max_completion_tokens" if "max_completion_tokens" in given else "max_tokens"
    req.max_tokens = number(given, key, int, 1)
    read_sampling(given, req)
    req.logprobs = read_logprobs(given)
    req.n = number(given, "n", int, 1) or 1
    return req


def refuse_fields(body: dict, strict: bool) -> None:
    """Refuse each field that would change the answer and cannot be honoured (and, strict, unknown ones)."""
    for name, (neutral, message) in REFUSED.items():
        if name in body and not any(_same(body[name], v) for v in neutral):
            raise RequestError(message or f"unsupported body field {name!r}: the local engine cannot honour it, "
                               "and ignoring it would change the answer", name,
                               f"leave {name!r} out" + (f" or send {json.dumps(neutral[0])}" if neutral else ""),
                               "unsupported_field")
    if strict:
        unknown = sorted(set(body) - SUPPORTED - IGNORED - set(REFUSED))
        if unknown:
            raise RequestError(f"unsupported body field{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(map(repr, unknown))}", unknown[0],
                               f"supported: {', '.join(sorted(SUPPORTED))}", "unsupported_field")


def read_messages(value, *, local_parts: bool = False) -> list[dict]:
    """`messages`: a non-empty list of chat messages, each checked and normalized."""
    if not isinstance(value, list) or not value:
        raise RequestError('"messages" must be a non-empty list of chat messages', "messages")
    kinds = OPENAI_PARTS + LOCAL_PARTS if local_parts else OPENAI_PARTS
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"{where} needs a role ({', '.join(sorted(ROLES))})", f"{where}.role")
        content = m.get("content")
        if content is None and m["role"] in NEEDS_CONTENT:
            raise RequestError(f'{where} ({m["role"]}) has no "content"', f"{where}.content",
                               'give it a string or a list of parts ("" for an empty message)')
        if content is not None and not isinstance(content, (str, list)):
            raise RequestError(f"{where}.content must be a string or a list of parts", f"{where}.content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _check_part(part, f"{where}.content[{j}]", kinds)
        if m.get("tool_calls") is not None and not isinstance(m["tool_calls"], list):
            raise RequestError(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
        try:
            out.append(normalize_message(m, "request", i))
        except (GemmaError, AttributeError, TypeError) as e:
            raise RequestError(f"{where} is not a chat message ({getattr(e, 'message', e)})", where) from None
    return out


def _check_part(part, where: str, kinds: tuple[str, ...]) -> None:
    if isinstance(part, str):
        return
    if not isinstance(part, dict):
        raise RequestError(f"{where} must be an object", where)
    kind = part.get("type")
    if kind not in kinds:
        raise RequestError(f"{where}.type {kind!r} is not supported ({', '.join(kinds)})", f"{where}.type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.text must be a string", f"{where}.text")
    elif kind in ("image_url", "video_url"):  # {"url": …} or the URL itself
        url = part.get(kind)
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise RequestError(f"{where}.{kind}.url must be a data: URL", f"{where}.{kind}")
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"]:
            raise RequestError(f"{where}.input_audio.data must be base64 audio", f"{where}.input_audio")
    elif kind in LOCAL_PARTS and not any(isinstance(part.get(k), str) and part[k] for k in ("path", "url", "data")):
        raise RequestError(f"{where} needs a \"path\" or \"url\"", where)


def read_tools(value) -> list[dict] | None:
    """`tools`: function tools; a bare declaration `{"name", "parameters"}` is wrapped. None when none."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise RequestError('"tools" must be a list of function tools', "tools")
    tools = []
    for i, t in enumerate(value):
        fn = (t.get("function") if "function" in t else t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f'tools[{i}] needs a function name ({{"type": "function", "function": {{"name": …}}}})',
                               f"tools[{i}]")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON Schema object",
                               f"tools[{i}].function.parameters")
        same = next((j for j, d in enumerate(tools) if d["function"]["name"] == fn["name"]), None)
        if same is not None:  # which one a call means is unknowable (Anthropic's API refuses them too)
            raise RequestError(f"tools[{i}] is named {fn['name']!r}, as tools[{same}] is; tool names must be unique",
                               f"tools[{i}]")
        tools.append({"type": "function", "function": fn})
    return tools or None


def read_tool_choice(value, tools: list[dict] | None = None) -> tuple[str, str | None]:
    """`tool_choice` -> ("auto" | "none" | "required", the named function or None). A named function is
    Chat's `{"type": "function", "function": {"name"}}` (Responses' `{"type": "function", "name"}` too);
    forcing a call needs declared tools, and the name among them."""
    if value is None or value in ("auto", "none"):
        return value or "auto", None
    if value == "required":
        name = None
    elif isinstance(value, dict) and value.get("type") == "function":
        fn = value.get("function")
        name = fn.get("name") if isinstance(fn, dict) else value.get("name")
        if not isinstance(name, str) or not name:
            raise RequestError('tool_choice must name its function: {"type": "function", "function": {"name": …}}',
                               "tool_choice")
    else:
        raise RequestError(f"tool_choice {json.dumps(value)[:60]} is not supported", "tool_choice",
                           'use "auto", "none", "required" or {"type": "function", "function": {"name": …}}')
    if not tools:
        raise RequestError("tool_choice asks for a tool call but the request declares no tools", "tool_choice",
                           'declare "tools", or use "auto"')
    try:
        call_grammar(tools, name)  # an unknown name, or one Gemma 4's call syntax cannot hold: said now
    except ToolChoiceError as e:
        raise RequestError(str(e), "tool_choice") from None
    return "required", name


def read_logprobs(body: dict) -> int | None:
    """`logprobs` (true: each token's logprob) and `top_logprobs` (0..20 alternatives) -> None or the count."""
    wanted = typed(body, "logprobs", bool)
    top = number(body, "top_logprobs", int, 0, MAX_TOP_LOGPROBS)
    if top and not wanted:
        raise RequestError('"top_logprobs" needs "logprobs": true', "top_logprobs")
    return (top or 0) if wanted else None


def read_logit_bias(value) -> dict[int, float] | None:
    """OpenAI's `logit_bias`: token ids (as strings or numbers) to biases from -100 to 100."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError('"logit_bias" must be an object of token ids to biases from -100 to 100', "logit_bias")
    out = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(f"logit_bias key {key!r} is not a token id", "logit_bias") from None
        if token < 0:
            raise RequestError(f"logit_bias key {key!r} is not a token id", "logit_bias")
        if not _is_number(bias) or not -100 <= bias <= 100:
            raise RequestError(f"logit_bias[{key}] must be a number from -100 to 100", "logit_bias")
        out[token] = float(bias)
    return out or None


def read_thinking(body: dict) -> bool | None:
    """chat_template_kwargs.enable_thinking, else reasoning_effort; None when neither says."""
    kwargs = typed(body, "chat_template_kwargs", dict)
    if kwargs and kwargs.get("enable_thinking") is not None:
        if not isinstance(kwargs["enable_thinking"], bool):
            raise RequestError('"chat_template_kwargs.enable_thinking" must be true or false', "chat_template_kwargs")
        return kwargs["enable_thinking"]
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in ("none", "minimal", "low", "medium", "high"):
            raise RequestError('"reasoning_effort" must be none, minimal, low, medium or high', "reasoning_effort")
        return effort not in ("none", "minimal")
    return None


def read_keep_thinking(body: dict) -> bool:
    """chat_template_kwargs.preserve_thinking (the template's own variable)."""
    kwargs = typed(body, "chat_template_kwargs", dict) or {}
    value = kwargs.get("preserve_thinking")
    if value is not None and not isinstance(value, bool):
        raise RequestError('"chat_template_kwargs.preserve_thinking" must be true or false', "chat_template_kwargs")
    return bool(value)


def read_response_format(value) -> tuple[dict | None, bool]:
    """`response_format` -> (JSON Schema or None, any-JSON-object mode). `strict` and `name` are accepted."""
    if value is None:
        return None, False
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None, False
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError('response_format json_schema needs {"json_schema": {"schema": {...}}}',
                               "response_format")
        return schema, False
    raise RequestError(f"response_format {json.dumps(value)[:60]} is not supported", "response_format",
                       "use text, json_object or json_schema")


def read_schema(value, name: str = "schema") -> dict | None:
    """A bare JSON Schema field (batch's `schema`)."""
    if value is not None and not isinstance(value, dict):
        raise RequestError(f'"{name}" must be a JSON Schema object', name)
    return value


def read_stop(value, name: str = "stop") -> tuple[str, ...]:
    """OpenAI's `stop`: a string or a list of up to 4 non-empty strings."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f'"{name}" must be a string or a list of up to 4 non-empty strings', name)
    return tuple(stops)


def read_sampling(body: dict, req: ChatRequest) -> None:
    """The `SAMPLING` numbers and `logit_bias` given in `body`, onto `req`."""
    for name, (kind, low, high) in SAMPLING.items():
        value = number(body, name, kind, low, high)
        if value is not None:
            setattr(req, name, value)
    if req.repeat_penalty == 0:
        raise RequestError('"repeat_penalty" must be above 0 (1 turns it off)', "repeat_penalty")
    req.logit_bias = read_logit_bias(body.get("logit_bias"))


def typed(data: dict, key: str, kind: type):
    """data[key] if it is of `kind` (or absent/null: None); else a RequestError naming it."""
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise RequestError(f'"{key}" must be {_NAMES[kind]}, not {json.dumps(value)[:40]}', key)
    return value


def number(data: dict, key: str, kind: type, low: float | None = None, high: float | None = None):
    """data[key] as an int or float within low..high (None when absent or null)."""
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or (kind is int and not float(value).is_integer()):
        raise RequestError(f'"{key}" must be {"a finite number" if kind is float else _NAMES[kind]}, '
                           f'not {json.dumps(value)[:40]}', key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f'"{key}" is {value}, outside {low}..{high if high is not None else "∞"}', key)
    return kind(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(value, neutral) -> bool:
    if _is_number(value) and _is_number(neutral):
        return value == neutral
    return type(value) is type(neutral) and value == neutral
