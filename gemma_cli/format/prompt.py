"""Build Gemma 4 prompts in pure Python, byte for byte what the model's own chat template renders.

Five Gemma 4 chat templates are known (see `VARIANTS`): Google's April 2026 release, the earlier
release many GGUFs embed, the canonical 2026-07-09 release for large (12B/26B/31B) and for small
(E2B/E4B) models, and llama.cpp's interleaved-thinking variant. They share one grammar and differ in a
handful of rules; a `Variant` names those differences, and `render` follows the variant it is given.
`variant_of(template_text)` recognises a template by the sha256 of its normalised text;
`default_variant(small)` is the newest canonical release for a model size.

Each is rendered the way transformers and llama-cpp-python do: `ImmutableSandboxedEnvironment(
trim_blocks=True, lstrip_blocks=True)` with `messages`, `tools`, `enable_thinking`,
`preserve_thinking`, `add_generation_prompt` and `bos_token`. Doing it in Python keeps jinja2 off the
startup path and lets the CLI build a prompt without a GGUF at hand. `tests/test_prompt.py` and
`tests/test_prompt_variants.py` check the equality on hand-written and random conversations.

Inputs follow the OpenAI / chat-template conventions: messages with roles system, developer, user,
assistant and tool; content as a string or a list of parts (`text`, `image`, `audio`, `video`, and
`image_url` / `input_audio` where the template reads them); assistant `tool_calls`, `reasoning` /
`reasoning_content` and the legacy `tool_responses`; tools as
`{"type": "function", "function": {"name", "description", "parameters", "response"?}}`.

Where the template reads a key that is absent, jinja yields `Undefined`: it prints as '', is falsy,
and iterates as an empty sequence. `_MISSING` plays that part here so that sparse inputs render
the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gemma_cli.format.reply import (
    CHANNEL_CLOSE,
    CHANNEL_OPEN,
    QUOTE,
    THOUGHT_HEADER,
    strip_thinking,
)

__all__ = ["QUOTE", "Variant", "VARIANTS", "default_variant", "ends_in_thought", "format_argument",
           "render", "strip_thinking", "variant_of"]

# The prefill that leaves the model inside a thought (the 2026-07-09 release, after a tool result).
OPEN_THOUGHT = CHANNEL_OPEN + THOUGHT_HEADER
EMPTY_THOUGHT = OPEN_THOUGHT + CHANNEL_CLOSE


@dataclass(frozen=True)
class Variant:
    """One known Gemma 4 chat template: what it renders differently from the others.

    Every flag is one rule where the releases part ways; `render` reads them, nothing else does.
    """

    name: str  # short id: "2026-04", "older", "2026-07-09-large", "2026-07-09-small", "llamacpp-interleaved"
    release: str  # for people: "April 2026", "2026-07-09", ...
    size: str  # the models it is for: "any", "large" (12B/26B/31B) or "small" (E2B/E4B)
    sha256: str  # of its normalised text (see `normalise`)
    null: bool = False  # None in arguments and results prints as `null` (else Python's `None`)
    media_aliases: bool = False  # `image_url` / `input_audio` parts count as image / audio
    media_state: bool = True  # a medium in a turn's content ends its tool-call state (`prev_message_type`)
    tool_result_media: bool = True  # a tool result's image/audio/video parts get their placeholders
    system_parts: bool = True  # a system content list is written part by part (else as Python's repr)
    filter_always: bool = False  # properties named description/type/properties/required/nullable dropped
    merge_forward: bool = False  # continues_into_next: a model turn followed by another stays open;
    #                              after tool results a turn is closed unless the conversation ends there
    thought_after_tool: bool = False  # with thinking on, `<|channel>thought\n` is prefilled after a tool result
    preserve_thinking: bool = False  # reads `preserve_thinking`; the thought gate is "after the last user
    #                                  message" (any answer), or any turn with calls when preserving
    string_arguments: bool = True  # string tool-call arguments copied verbatim (else refused, as mappings only)
    unknown_name: bool = False  # a nameless tool result (None or '') is named "unknown" (else only when absent)
    content_truthiness: bool = False  # closing after tool results looks at the raw content (else the rendered)
    empty_thought: bool = True  # the generation prompt, thinking off, prefills an empty thought block
    interleaved: bool = False  # llama.cpp's variant: tool messages are their own turns, thought kept in calls

    @property
    def label(self) -> str:
        """`2026-07-09 (small: E2B/E4B)`: what a user reads in /show template and --json."""
        size = {"any": "all sizes", "large": "large: 12B/26B/31B", "small": "small: E2B/E4B"}[self.size]
        return f"{self.release} ({size})"


APRIL = Variant("2026-04", "April 2026", "any", "36e3a42e5cf14cd0020e72d92e1fdd9970f59b82170e421f0cbe1bb42bead3f0")
OLDER = Variant("older", "before April 2026", "any", "1d35a24a2a63cc600c0cab43628a6df4cd3318e959b03307cf5f9f7e29ecf783",
                tool_result_media=False, system_parts=False, filter_always=True, content_truthiness=True)
_CANONICAL = dict(null=True, media_aliases=True, media_state=False, merge_forward=True, thought_after_tool=True,
                  preserve_thinking=True, string_arguments=False, unknown_name=True)
LARGE = Variant("2026-07-09-large", "2026-07-09", "large",
                "2af48814bacaf2a35a2d57aa19eee6c42ed530011977e8f414cf1d467da446c2", **_CANONICAL)
SMALL = Variant("2026-07-09-small", "2026-07-09", "small",
                "523fc86ed4db0357763963f4b0fdbce319903f1f68b2d03f593bef7a56836533", empty_thought=False, **_CANONICAL)
INTERLEAVED = Variant("llamacpp-interleaved", "llama.cpp interleaved", "any",
                      "df900edd2fcee5defc268bee887666c43c976d973bb3e87355b52423a651bf91",
                      system_parts=False, filter_always=True, interleaved=True)

#: Every known template, by name.
VARIANTS = {v.name: v for v in (APRIL, OLDER, LARGE, SMALL, INTERLEAVED)}
_BY_HASH = {v.sha256: v for v in VARIANTS.values()}


# A turn's end: where a conversation's later prompts restart (gemma serve's save points look for it).
TURN_END = "<turn|>\n"


def normalise(template: str) -> str:
    """A template's text as recognised: line ends unified, surrounding whitespace dropped."""
    return template.replace("\r\n", "\n").strip()


def variant_of(template: str | None) -> Variant | None:
    """The known variant whose text `template` is, or None (absent or not one we know)."""
    if not template:
        return None
    return _BY_HASH.get(hashlib.sha256(normalise(template).encode("utf-8")).hexdigest())


def default_variant(small: bool) -> Variant:
    """The newest canonical template for a model size (small: E2B/E4B)."""
    return SMALL if small else LARGE


def ends_in_thought(prompt: str) -> bool:
    """Whether the prompt leaves the model inside an open thought (its reply starts as thinking)."""
    return prompt.endswith(OPEN_THOUGHT)


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


def format_argument(value: Any, escape_keys: bool = True, *, null: bool = False) -> str:
    """Write one value in Gemma 4's argument syntax, as the template's `format_argument` macro.

    Strings are quoted with `<|"|>`, booleans are `true`/`false`, mappings are `{k:v,...}` in
    case-insensitive key order (keys quoted too when `escape_keys`), sequences are `[a,b]`;
    None is `null` where the template says so (`null`, the 2026-07-09 release); anything else
    prints as Python prints it (`None`, `1.5`, `1e+20`), because so does jinja.
    """
    if value is None and null:
        return "null"
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, Mapping):
        items = []
        for key, item in _dictsort(value):
            name = _concat(QUOTE, key, QUOTE) if escape_keys else str(key)
            items.append(name + ":" + format_argument(item, escape_keys=escape_keys, null=null))
        return "{" + ",".join(items) + "}"
    if _is_sequence(value):
        return "[" + ",".join(format_argument(item, escape_keys=escape_keys, null=null) for item in value) + "]"
    return str(value)


def _format_items(items: Mapping, v: Variant) -> str:
    # The `items` schema of an array property: only a few keys get special treatment, the rest
    # are written as arguments (with quoted keys, unlike everywhere else in a declaration).
    fields = []
    for key, value in _dictsort(items):
        if value is None:
            continue
        if key == "properties":
            inner = _format_parameters(value, v) if isinstance(value, Mapping) else ""
            fields.append("properties:{" + inner + "}")
        elif key == "required":
            fields.append("required:[" + ",".join(QUOTE + str(r) + QUOTE for r in value) + "]")
        elif key == "type":
            if isinstance(value, str):
                fields.append("type:" + format_argument(value.upper(), null=v.null))
            else:
                fields.append("type:" + format_argument([_upper(t) for t in value], null=v.null))
        else:
            fields.append(str(key) + ":" + format_argument(value, null=v.null))
    return "items:{" + ",".join(fields) + "}"


# Keys of a schema node that describe it rather than name a property (see `filter_keys`).
_STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")


def _required(value: Any) -> str:
    return "required:[" + ",".join(QUOTE + str(r) + QUOTE for r in value) + "]"


def _format_property(value: Any, v: Variant) -> str:
    # One property's schema: description, enum or items, nullable, nested properties and
    # required, and always the type last, in the template's fixed order.
    if v.interleaved:
        return _format_property_interleaved(value, v)
    fields = []
    description = _get(value, "description")
    if description:
        fields.append("description:" + QUOTE + str(description) + QUOTE)
    kind = _upper(_get(value, "type"))
    if kind == "STRING":
        enum = _get(value, "enum")
        if enum:
            fields.append("enum:" + format_argument(enum, null=v.null))
    elif kind == "ARRAY":
        items = _get(value, "items")
        if isinstance(items, Mapping) and items:
            fields.append(_format_items(items, v))
    if _get(value, "nullable"):
        fields.append("nullable:true")
    if kind == "OBJECT":
        properties = _get(value, "properties")
        if isinstance(properties, Mapping):
            fields.append("properties:{" + _format_parameters(properties, v) + "}")
        elif isinstance(value, Mapping):
            # No usable `properties`: the template describes the node's own non-standard keys
            # (additionalProperties, ...) as if they were properties.
            fields.append("properties:{" + _format_parameters(value, v, filter_keys=True) + "}")
        required = _get(value, "required")
        if required:
            fields.append(_required(required))
    fields.append("type:" + QUOTE + kind + QUOTE)
    return "{" + ",".join(fields) + "}"


def _format_property_interleaved(value: Any, v: Variant) -> str:
    # llama.cpp's interleaved template orders a property as description, nullable, then enum /
    # properties+required / items, and writes a leading comma before properties, required and
    # items whatever came before them (so `{,properties:{...}type:...}` can happen): kept as is.
    out, comma = "{", False
    description = _get(value, "description")
    if description:
        out += "description:" + QUOTE + str(description) + QUOTE
        comma = True
    if _get(value, "nullable"):
        out += ("," if comma else "") + "nullable:true"
        comma = True
    kind = _upper(_get(value, "type"))
    if kind == "STRING":
        enum = _get(value, "enum")
        if enum:
            out += ("," if comma else "") + "enum:" + format_argument(enum)
            comma = True
    elif kind == "OBJECT":
        properties = _get(value, "properties")
        inner = ""
        if isinstance(properties, Mapping):
            inner = _format_parameters(properties, v)
        elif isinstance(value, Mapping):
            inner = _format_parameters(value, v)
        out += ",properties:{" + inner + "}"
        required = _get(value, "required")
        if required:
            out += "," + _required(required)
    elif kind == "ARRAY":
        items = _get(value, "items")
        if isinstance(items, Mapping) and items:
            out += "," + _format_items(items, v)
    return out + ("," if comma else "") + "type:" + QUOTE + kind + QUOTE + "}"


def _format_parameters(properties: Mapping, v: Variant, filter_keys: bool = False) -> str:
    # The template's `format_parameters` macro; its `required` argument is never used there.
    # Older releases filter the standard keys everywhere (dropping a property named `type`).
    filter_keys = filter_keys or v.filter_always
    return ",".join(
        str(key) + ":" + _format_property(value, v)
        for key, value in _dictsort(properties)
        if not filter_keys or key not in _STANDARD_KEYS
    )


def _format_declaration(tool: Mapping, v: Variant) -> str:
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
            out += "properties:{" + _format_parameters(properties, v) + "},"
        required = _get(params, "required")
        if required:
            out += _required(required) + ","
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


def _format_tool_response(name: Any, response: Any, v: Variant) -> str:
    # A mapping response lists its fields; anything else is wrapped as `{value:...}`.
    if isinstance(response, Mapping):
        fields = ",".join(str(k) + ":" + format_argument(x, escape_keys=False, null=v.null) for k, x in _dictsort(response))
        body = _concat("response:", name, "{") + fields + "}"
    else:
        body = _concat("response:", name, "{value:", format_argument(response, escape_keys=False, null=v.null), "}")
    return "<|tool_response>" + body + "<tool_response|>"


_MEDIA = {"image": "<|image|>", "audio": "<|audio|>", "video": "<|video|>"}
_ALIASES = {"image_url": "image", "input_audio": "audio"}


def _medium(kind: Any, v: Variant) -> str | None:
    # The medium a part's type names ("image", "audio", "video"), None for any other part.
    if not isinstance(kind, str):
        return None
    if v.media_aliases:
        kind = _ALIASES.get(kind, kind)
    return kind if kind in _MEDIA else None


def _render_system(first: Mapping | None, tools: Any, thinking: bool, v: Variant) -> str:
    # The system turn: <|think|> first when thinking, then the system/developer text, then tools.
    out = "<|turn>system\n"
    if thinking:
        out += "<|think|>\n"
    if first is not None:
        content = _get(first, "content")
        if not v.system_parts:
            out += _trim(content)  # older releases: `content | trim`, a list printed as Python's repr
        elif isinstance(content, str):
            out += content.strip()
        elif _is_sequence(content):
            # Each part's text is trimmed and followed by a space, media parts included (as ' ').
            out += "".join(_trim(_get(item, "text")) + " " for item in content)
    if tools:
        out += "".join("<|tool>" + _format_declaration(tool, v) + "<tool|>" for tool in tools)
    return out + TURN_END


def _tool_name(call_message: Mapping, follow: Mapping, v: Variant) -> Any:
    # A tool message is named after the tool call whose id it answers; without ids (None == None)
    # every call matches and the last one wins. Otherwise its own `name` (None, or "unknown" in
    # the 2026-07-09 release, if absent).
    name = follow.get("name")
    if v.unknown_name:
        name = name or "unknown"
    for call in call_message["tool_calls"]:
        if call.get("id") == follow.get("tool_call_id"):
            name = call["function"]["name"]
    return name


def _render_tool_results(messages: list, index: int, v: Variant) -> str:
    # The OpenAI way: the `tool` messages right after an assistant's tool calls are written into
    # the model turn that made the calls; the first non-tool message ends the scan.
    out = ""
    message = messages[index]
    for follow in messages[index + 1 :]:
        if _get(follow, "role") != "tool":
            break
        name = _tool_name(message, follow, v)
        body = follow.get("content")
        if isinstance(body, str):
            out += _format_tool_response(name, body, v)
        elif isinstance(body, Mapping) and body:
            # Deliberate extension: the template sends a dict down its content-parts branch
            # (a dict passes jinja's `sequence` test) and fails on `'key'.get`. We write it as a
            # structured response instead, as its `else` branch and the legacy form would.
            out += _format_tool_response(name, body, v)
        elif _is_sequence(body):
            if not all(isinstance(part, Mapping) for part in body):
                # The template fails here too (`1.get`); say why instead of an AttributeError.
                raise ValueError("a tool message's content list must hold content parts ({'type': ...} dicts)")
            # A text part without text is an error in the template (`'' + None`), so here too.
            text = "".join(_concat(part.get("text")) for part in body if part.get("type") == "text")
            out += _format_tool_response(name, text, v)
            if v.tool_result_media:
                for part in body:
                    medium = _medium(part.get("type"), v)
                    out += _MEDIA[medium] if medium else ""
        else:
            out += _format_tool_response(name, body, v)
    return out


def _render_tool_calls(calls: Any, v: Variant) -> str:
    out = ""
    for call in calls:
        function = call["function"]
        arguments = _get(function, "arguments")
        if isinstance(arguments, Mapping):
            body = ",".join(str(k) + ":" + format_argument(x, escape_keys=False, null=v.null) for k, x in _dictsort(arguments))
        elif v.string_arguments and isinstance(arguments, str):
            # Already in Gemma syntax (or whatever the caller wrote): copied verbatim.
            body = arguments
        elif v.string_arguments or arguments is None:
            body = ""
        else:
            raise ValueError("this chat template takes tool-call arguments as a JSON object (a mapping), "
                             f"not {type(arguments).__name__}: deserialize them first")
        out += _concat("<|tool_call>call:", _get(function, "name"), "{") + body + "}<tool_call|>"
    return out


def _render_content(content: Any, model: bool, v: Variant) -> tuple[str, str | None]:
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
        else:
            medium = _medium(kind, v)
            if medium:
                out += _MEDIA[medium]
                last_media = medium
    return out, last_media


def _next_role(messages: list, index: int) -> Any:
    # The role of the next message that is not a tool result (None when there is none).
    for follow in messages[index + 1 :]:
        if follow["role"] != "tool":
            return follow["role"]
    return None


def _render_message(messages: list, index: int, last_user: int, previous_role: Any, v: Variant,
                    preserve: bool) -> tuple[str, str | None]:
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

    # Thinking is sent back only inside the current exchange, never for old turns.
    thinking = message.get("reasoning") or message.get("reasoning_content")
    if v.preserve_thinking:
        gate = index > last_user or bool(preserve and message.get("tool_calls"))
    else:
        gate = index > last_user and bool(message.get("tool_calls"))
    if thinking and gate:
        out += _concat(OPEN_THOUGHT, thinking, "\n" + CHANNEL_CLOSE)

    if _get(message, "tool_calls"):
        out += _render_tool_calls(message["tool_calls"], v)
        state = "tool_call"

    answered = False
    if message.get("tool_responses"):
        # Legacy (Gemma-native) form: results carried on the assistant message itself.
        for result in message["tool_responses"]:
            name = _get(result, "name")
            if name is _MISSING or (v.unknown_name and not name):
                name = "unknown"
            out += _format_tool_response(name, _get(result, "response"), v)
            answered = True
            state = "tool_response"
    elif message.get("tool_calls"):
        results = _render_tool_results(messages, index, v)
        if results:
            out += results
            answered = True
            state = "tool_response"

    content, media = _render_content(_get(message, "content"), role == "model", v)
    out += content
    if media and v.media_state:
        state = media
    has_content = bool(message.get("content")) if v.content_truthiness else bool(content.strip())

    if state == "tool_call" and not answered:
        # Calls without results yet: open the response slot for the caller to fill.
        out += "<|tool_response>"
    elif v.merge_forward:
        following = _next_role(messages, index)
        if role == "model" and following == "assistant" and (not message.get("tool_calls") or answered):
            pass  # continues into the next model message: the turn stays open
        elif not (answered and not has_content and following is None):
            out += TURN_END
    elif not (answered and not has_content):
        # After tool results with no answer text, the model turn stays open.
        out += TURN_END
    return out, state


def _render_interleaved(rest: list, state: str | None, thinking: bool, add_generation_prompt: bool, v: Variant) -> str:
    # llama.cpp's interleaved variant: every message is its own turn (tool results too, as
    # `<|turn>tool`), a call after results continues the same turn, and the thought of a call made
    # after the last user message is written back (`reasoning_content` only, no newline before
    # `<channel|>`). Its generation prompt prefills the empty thought even after tool results.
    last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=-1)
    out = ""
    for index, message in enumerate(rest):
        role = "model" if message["role"] == "assistant" else message["role"]
        calls = _get(message, "tool_calls")
        if not (state == "tool_response" and calls):
            out += _concat("<|turn>", role, "\n")
        state = None
        if calls:
            thought = _get(message, "reasoning_content")
            if thought and index > last_user:
                out += OPEN_THOUGHT + str(thought) + CHANNEL_CLOSE
            out += _render_tool_calls(calls, v)
            state = "tool_call"
        results = _get(message, "tool_responses")
        if results:
            for result in results:
                name = _get(result, "name")
                out += _format_tool_response("unknown" if name is _MISSING else name, _get(result, "response"), v)
            state = "tool_response"
        content, media = _render_content(_get(message, "content"), role == "model", v)
        out += content
        if media:
            state = media
        if not (results and not _get(message, "content")):
            out += TURN_END
    if add_generation_prompt:
        if state != "tool_response":
            out += "<|turn>model\n"
        if not thinking:
            out += EMPTY_THOUGHT
    return out


def render(
    messages: list[Mapping[str, Any]],
    tools: list[Mapping[str, Any]] | None = None,
    *,
    thinking: bool = False,
    add_generation_prompt: bool = True,
    bos: str = "<bos>",
    variant: Variant = APRIL,
    preserve_thinking: bool = False,
) -> str:
    """The Gemma 4 prompt for `messages` (and `tools`), equal to `variant`'s template output.

    `thinking` is the template's `enable_thinking`; `preserve_thinking` its `preserve_thinking`
    (read by the 2026-07-09 release only: the thought of every turn with tool calls goes back);
    `bos` its `bos_token` (pass "" when the tokenizer adds BOS itself). The prompt ends with the
    model's turn opened (with an empty thought channel when thinking is off, on templates that
    write one), unless the conversation ends inside a tool exchange.
    """
    if not messages:
        raise ValueError("a prompt needs at least one message")
    out = bos
    v = variant
    # The template's `prev_message_type`: it decides whether a generation prompt follows.
    state: str | None = None
    first_is_system = messages[0]["role"] in ("system", "developer")
    if thinking or tools or first_is_system:
        out += _render_system(messages[0] if first_is_system else None, tools, thinking, v)
        state = "tool" if tools else "think" if thinking else None
    rest = list(messages[1:] if first_is_system else messages)
    if v.interleaved:
        return out + _render_interleaved(rest, state, thinking, add_generation_prompt, v)

    last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=-1)
    previous_role = None
    for index, message in enumerate(rest):
        if message["role"] == "tool":
            # Written inside the model turn that called the tool (see _render_tool_results).
            continue
        text, state = _render_message(rest, index, last_user, previous_role, v, preserve_thinking)
        out += text
        previous_role = message["role"]

    if add_generation_prompt:
        if state not in ("tool_response", "tool_call"):
            out += "<|turn>model\n"
            if not thinking and v.empty_thought:
                out += EMPTY_THOUGHT
        elif state == "tool_response" and thinking and v.thought_after_tool:
            out += OPEN_THOUGHT
    return out
