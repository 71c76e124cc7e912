"""Build Gemma 4 prompts in pure Python, byte for byte what the official chat template renders.

The reference is `gemma4-chat-template.jinja` (the newest known release) rendered the way
transformers and llama-cpp-python do: `ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True)` with `messages`, `tools`, `enable_thinking`, `add_generation_prompt` and
`bos_token`. Doing it in Python keeps jinja2 off the startup path and lets the CLI build a prompt
without a GGUF at hand. `tests/test_prompt.py` checks the equality on hand-written and random
conversations.

Inputs follow the OpenAI / chat-template conventions: messages with roles system, developer, user,
assistant and tool; content as a string or a list of parts (`text`, `image`, `audio`, `video`);
assistant `tool_calls`, `reasoning` / `reasoning_content` and the legacy `tool_responses`; tools as
`{"type": "function", "function": {"name", "description", "parameters", "response"?}}`.

Where the template reads a key that is absent, jinja yields `Undefined`: it prints as '', is falsy,
and iterates as an empty sequence. `_MISSING` plays that part here so that sparse inputs render
the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A string in Gemma 4's argument syntax is wrapped in this token on both sides.
QUOTE = '<|"|>'

__all__ = ["QUOTE", "format_argument", "render", "strip_thinking"]


class _Missing:
    """Stands for jinja's Undefined: what the template sees for an absent key."""

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        # `{{ value }}` prints Undefined as nothing.
        return ""

    def __repr__(self) -> str:
        return "<missing>"

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def __getitem__(self, key):
        # Never called; present so that `_is_sequence` sees what jinja's `sequence` test sees in
        # Undefined (len() and __getitem__), which makes `format_argument` print it as `[]`.
        raise KeyError(key)


_MISSING = _Missing()


def _get(obj: Any, key: str) -> Any:
    # jinja's `obj[key]`: a missing key, or indexing something that is not a mapping, is Undefined.
    if isinstance(obj, Mapping):
        return obj.get(key, _MISSING)
    return _MISSING


def _trim(value: Any) -> str:
    # jinja's `trim` filter: str() then Python's str.strip() (all Unicode whitespace).
    return str(value).strip()


def _upper(value: Any) -> str:
    # jinja's `upper` filter stringifies first: a list type prints as "['STRING', 'NULL']".
    return str(value).upper()


def _is_sequence(value: Any) -> bool:
    # jinja's `sequence` test: anything with len() and __getitem__ (so dicts and strings too).
    try:
        len(value)
        value.__getitem__  # noqa: B018 - the attribute lookup is the test
    except Exception:  # noqa: BLE001 - jinja swallows every failure here as well
        return False
    return True


def _dictsort(mapping: Mapping) -> list[tuple[Any, Any]]:
    # jinja's `dictsort` sorts by key, case-insensitively by default; ties keep insertion order.
    return sorted(mapping.items(), key=lambda kv: kv[0].lower() if isinstance(kv[0], str) else kv[0])


def _concat(*parts: Any) -> str:
    # The template joins with `+`, which fails on a non-string (a None name, say); fail alike
    # rather than print something the template never would.
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"expected a string in the prompt, got {type(part).__name__}: {part!r}")
    return "".join(parts)


def format_argument(value: Any, escape_keys: bool = True) -> str:
    """Write one value in Gemma 4's argument syntax, as the template's `format_argument` macro.

    Strings are quoted with `<|"|>`, booleans are `true`/`false`, mappings are `{k:v,...}` in
    case-insensitive key order (keys quoted too when `escape_keys`), sequences are `[a,b]`;
    anything else prints as Python prints it (`None`, `1.5`, `1e+20`), because so does jinja.
    """
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, Mapping):
        items = []
        for key, item in _dictsort(value):
            name = _concat(QUOTE, key, QUOTE) if escape_keys else str(key)
            items.append(name + ":" + format_argument(item, escape_keys=escape_keys))
        return "{" + ",".join(items) + "}"
    if _is_sequence(value):
        return "[" + ",".join(format_argument(item, escape_keys=escape_keys) for item in value) + "]"
    return str(value)


def _format_items(items: Mapping) -> str:
    # The `items` schema of an array property: only a few keys get special treatment, the rest
    # are written as arguments (with quoted keys, unlike everywhere else in a declaration).
    fields = []
    for key, value in _dictsort(items):
        if value is None:
            continue
        if key == "properties":
            inner = _format_parameters(value) if isinstance(value, Mapping) else ""
            fields.append("properties:{" + inner + "}")
        elif key == "required":
            fields.append("required:[" + ",".join(QUOTE + str(r) + QUOTE for r in value) + "]")
        elif key == "type":
            if isinstance(value, str):
                fields.append("type:" + format_argument(value.upper()))
            else:
                fields.append("type:" + format_argument([_upper(t) for t in value]))
        else:
            fields.append(str(key) + ":" + format_argument(value))
    return "items:{" + ",".join(fields) + "}"


# Keys of a schema node that describe it rather than name a property (see `filter_keys`).
_STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")


def _format_property(value: Any) -> str:
    # One property's schema: description, enum or items, nullable, nested properties and
    # required, and always the type last, in the template's fixed order.
    fields = []
    description = _get(value, "description")
    if description:
        fields.append("description:" + QUOTE + str(description) + QUOTE)
    kind = _upper(_get(value, "type"))
    if kind == "STRING":
        enum = _get(value, "enum")
        if enum:
            fields.append("enum:" + format_argument(enum))
    elif kind == "ARRAY":
        items = _get(value, "items")
        if isinstance(items, Mapping) and items:
            fields.append(_format_items(items))
    if _get(value, "nullable"):
        fields.append("nullable:true")
    if kind == "OBJECT":
        properties = _get(value, "properties")
        if isinstance(properties, Mapping):
            fields.append("properties:{" + _format_parameters(properties) + "}")
        elif isinstance(value, Mapping):
            # No usable `properties`: the template describes the node's own non-standard keys
            # (additionalProperties, ...) as if they were properties.
            fields.append("properties:{" + _format_parameters(value, filter_keys=True) + "}")
        required = _get(value, "required")
        if required:
            fields.append("required:[" + ",".join(QUOTE + str(r) + QUOTE for r in required) + "]")
    fields.append("type:" + QUOTE + kind + QUOTE)
    return "{" + ",".join(fields) + "}"


def _format_parameters(properties: Mapping, filter_keys: bool = False) -> str:
    # The template's `format_parameters` macro; its `required` argument is never used there.
    return ",".join(
        str(key) + ":" + _format_property(value)
        for key, value in _dictsort(properties)
        if not filter_keys or key not in _STANDARD_KEYS
    )


def _format_declaration(tool: Mapping) -> str:
    # `declaration:NAME{description:...,parameters:{...},response:{...}}`. The parameters brace is
    # only closed when the schema has a `type`, and `response` keeps only description and an
    # OBJECT type: quirks of the official template, kept on purpose.
    function = tool["function"]
    out = "declaration:" + str(_get(function, "name"))
    out += "{description:" + QUOTE + str(_get(function, "description")) + QUOTE
    params = _get(function, "parameters")
    if params:
        out += ",parameters:{"
        properties = _get(params, "properties")
        if properties:
            out += "properties:{" + _format_parameters(properties) + "},"
        required = _get(params, "required")
        if required:
            out += "required:[" + ",".join(QUOTE + str(r) + QUOTE for r in required) + "],"
        kind = _get(params, "type")
        if kind:
            out += "type:" + QUOTE + _upper(kind) + QUOTE + "}"
    if isinstance(function, Mapping) and "response" in function:
        response = function["response"]
        out += ",response:{"
        description = _get(response, "description")
        if description:
            out += "description:" + QUOTE + str(description) + QUOTE + ","
        kind = _upper(_get(response, "type"))
        if kind == "OBJECT":
            out += "type:" + QUOTE + kind + QUOTE + "}"
    return (out + "}").strip()


def _format_tool_response(name: Any, response: Any) -> str:
    # A mapping response lists its fields; anything else is wrapped as `{value:...}`.
    if isinstance(response, Mapping):
        fields = ",".join(str(k) + ":" + format_argument(v, escape_keys=False) for k, v in _dictsort(response))
        body = _concat("response:", name, "{") + fields + "}"
    else:
        body = _concat("response:", name, "{value:", format_argument(response, escape_keys=False), "}")
    return "<|tool_response>" + body + "<tool_response|>"


def strip_thinking(text: str) -> str:
    """Drop `<|channel>...<channel|>` thought blocks from model text, then strip it.

    Earlier turns must go back to the model without their thinking. An unclosed `<|channel>`
    drops the rest of its segment, as in the template.
    """
    kept = []
    for part in text.split("<channel|>"):
        kept.append(part.split("<|channel>")[0])
    return "".join(kept).strip()


_MEDIA = {"image": "<|image|>", "audio": "<|audio|>", "video": "<|video|>"}


def _media(kind: Any) -> str:
    # The placeholder token of a media part, '' for any other kind of part.
    return _MEDIA.get(kind, "") if isinstance(kind, str) else ""


def _render_system(first: Mapping | None, tools: Any, thinking: bool) -> str:
    # The system turn: <|think|> first when thinking, then the system/developer text, then tools.
    out = "<|turn>system\n"
    if thinking:
        out += "<|think|>\n"
    if first is not None:
        content = _get(first, "content")
        if isinstance(content, str):
            out += content.strip()
        elif _is_sequence(content):
            # Each part's text is trimmed and followed by a space, media parts included (as ' ').
            out += "".join(_trim(_get(item, "text")) + " " for item in content)
    if tools:
        out += "".join("<|tool>" + _format_declaration(tool) + "<tool|>" for tool in tools)
    return out + "<turn|>\n"


def _tool_name(call_message: Mapping, follow: Mapping) -> Any:
    # A tool message is named after the tool call whose id it answers; without ids (None == None)
    # every call matches and the last one wins. Otherwise its own `name` (None if absent).
    name = follow.get("name")
    for call in call_message["tool_calls"]:
        if call.get("id") == follow.get("tool_call_id"):
            name = call["function"]["name"]
    return name


def _render_tool_results(messages: list, index: int) -> str:
    # The OpenAI way: the `tool` messages right after an assistant's tool calls are written into
    # the model turn that made the calls; the first non-tool message ends the scan.
    out = ""
    message = messages[index]
    for follow in messages[index + 1 :]:
        if _get(follow, "role") != "tool":
            break
        name = _tool_name(message, follow)
        body = follow.get("content")
        if isinstance(body, str):
            out += _format_tool_response(name, body)
        elif isinstance(body, Mapping) and body:
            # Deliberate extension: the template sends a dict down its content-parts branch
            # (a dict passes jinja's `sequence` test) and fails on `'key'.get`. We write it as a
            # structured response instead, as its `else` branch and the legacy form would.
            out += _format_tool_response(name, body)
        elif _is_sequence(body):
            if not all(isinstance(part, Mapping) for part in body):
                # The template fails here too (`1.get`); say why instead of an AttributeError.
                raise ValueError("a tool message's content list must hold content parts ({'type': ...} dicts)")
            # A text part without text is an error in the template (`'' + None`), so here too.
            text = "".join(_concat(part.get("text")) for part in body if part.get("type") == "text")
            out += _format_tool_response(name, text)
            out += "".join(_media(part.get("type")) for part in body)
        else:
            out += _format_tool_response(name, body)
    return out


def _render_tool_calls(calls: Any) -> str:
    out = ""
    for call in calls:
        function = call["function"]
        arguments = _get(function, "arguments")
        if isinstance(arguments, Mapping):
            body = ",".join(str(k) + ":" + format_argument(v, escape_keys=False) for k, v in _dictsort(arguments))
        elif isinstance(arguments, str):
            # Already in Gemma syntax (or whatever the caller wrote): copied verbatim.
            body = arguments
        else:
            body = ""
        out += _concat("<|tool_call>call:", _get(function, "name"), "{") + body + "}<tool_call|>"
    return out


def _render_content(content: Any, model: bool) -> tuple[str, str | None]:
    # The text of a turn, and the kind of the last medium in it (the closing rule looks at it).
    last_media = None
    if isinstance(content, str):
        return (strip_thinking(content) if model else content.strip()), None
    if not _is_sequence(content):
        return "", None
    out = ""
    for item in content:
        kind = _get(item, "type")
        if kind == "text":
            text = _get(item, "text")
            out += strip_thinking(text) if model else _trim(text)
        elif _media(kind):
            out += _media(kind)
            last_media = kind
    return out, last_media


def _render_message(messages: list, index: int, last_user: int, previous_role: Any) -> tuple[str, str | None]:
    # One non-tool message; returns its text and the template's `prev_message_type` after it.
    # `previous_role` is the role of the nearest earlier message that is not a tool result.
    message = messages[index]
    role = "model" if message["role"] == "assistant" else message["role"]
    state = None
    out = ""
    # An assistant message right after another (tool results between them do not count)
    # continues the same model turn: the model speaks again after reading the results.
    if not (role == "model" and previous_role == "assistant"):
        out += _concat("<|turn>", role, "\n")

    # Thinking is sent back only inside the current tool-calling exchange, never for old turns.
    thinking = message.get("reasoning") or message.get("reasoning_content")
    if thinking and index > last_user and message.get("tool_calls"):
        out += _concat("<|channel>thought\n", thinking, "\n<channel|>")

    if _get(message, "tool_calls"):
        out += _render_tool_calls(message["tool_calls"])
        state = "tool_call"

    answered = False
    if message.get("tool_responses"):
        # Legacy (Gemma-native) form: results carried on the assistant message itself.
        for result in message["tool_responses"]:
            name = _get(result, "name")
            out += _format_tool_response("unknown" if name is _MISSING else name, _get(result, "response"))
            answered = True
            state = "tool_response"
    elif message.get("tool_calls"):
        results = _render_tool_results(messages, index)
        if results:
            out += results
            answered = True
            state = "tool_response"

    content, media = _render_content(_get(message, "content"), role == "model")
    out += content
    if media:
        state = media

    if state == "tool_call" and not answered:
        # Calls without results yet: open the response slot for the caller to fill.
        out += "<|tool_response>"
    elif not (answered and not content.strip()):
        # After tool results with no answer text, the model turn stays open.
        out += "<turn|>\n"
    return out, state


def render(
    messages: list[Mapping[str, Any]],
    tools: list[Mapping[str, Any]] | None = None,
    *,
    thinking: bool = False,
    add_generation_prompt: bool = True,
    bos: str = "<bos>",
) -> str:
    """The Gemma 4 prompt for `messages` (and `tools`), equal to the official template's output.

    `thinking` is the template's `enable_thinking`; `bos` its `bos_token` (pass "" when the
    tokenizer adds BOS itself). The prompt ends with the model's turn opened, with an empty thought
    channel when thinking is off, unless the conversation ends inside a tool exchange.
    """
    if not messages:
        raise ValueError("a prompt needs at least one message")
    out = bos
    # The template's `prev_message_type`: it decides whether a generation prompt follows.
    state: str | None = None
    first_is_system = messages[0]["role"] in ("system", "developer")
    if thinking or tools or first_is_system:
        out += _render_system(messages[0] if first_is_system else None, tools, thinking)
        state = "tool" if tools else "think" if thinking else None
    rest = list(messages[1:] if first_is_system else messages)

    last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=-1)
    previous_role = None
    for index, message in enumerate(rest):
        if message["role"] == "tool":
            # Written inside the model turn that called the tool (see _render_tool_results).
            continue
        text, state = _render_message(rest, index, last_user, previous_role)
        out += text
        previous_role = message["role"]

    if add_generation_prompt and state not in ("tool_response", "tool_call"):
        out += "<|turn>model\n"
        if not thinking:
            out += "<|channel>thought\n<channel|>"
    return out
