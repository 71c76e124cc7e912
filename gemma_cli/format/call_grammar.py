"""GBNF grammars that force a reply to be Gemma 4 tool calls (`tool_choice` "required" or a named tool).

A forced reply is one call, or several, in Gemma 4's own syntax (what `reply.parse_call` reads and
the templates write back):

    <|tool_call>call:NAME{key:value,...}<tool_call|>

with the arguments following the tool's JSON Schema in Gemma 4's argument notation: strings
between `<|"|>` quotes, keys bare (quoted `<|"|>` only where a bare key cannot be read back),
numbers, `true`/`false`, `null`, `[…]` and `{…}`. The grammar covers the answer only: a thought
before it runs free (the engine's free-thought rule, `Job.free_thought`).

What of JSON Schema is enforced: `type` (one or a list), `properties` with `required` (the
declared order, optional properties may be left out; no other keys), `items`, `prefixItems`,
`minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf`, `allOf` of objects (merged), `$ref` to
`#/$defs/…` or `#/definitions/…`, `minLength`/`maxLength`, and integers with `minimum >= 0` written
without a sign. Not enforced (any value of the type passes): `pattern`, `format`, numeric ranges
otherwise, `additionalProperties` schemas (no extra keys are generated), `not`, `if`/`then`.
A string holds no control-token text (`<|`, `|>`, `<eos>`, `<pad>`…), so the reply parser reads it
back whole. Numbers have at most 16 digits before and after the point and a two-digit exponent (no
overflow to infinity).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

QUOTE = '<|"|>'
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
_TOOL_NAME = re.compile(r"[\w.\-]+")  # what reply.parse_call reads as a name
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")  # written bare (reply reads more; these are safe)
# A string's text must not contain these (a quote, a call's or turn's end would cut it short).
# `<|` and `|>` cover every Gemma 4 marker but these few, which are whole words.
FORBIDDEN = ("<|", "|>", "<eos>", "<bos>", "<pad>", "<unk>", "<mask>")


class ToolChoiceError(ValueError):
    """A tool_choice that no grammar can satisfy (an unknown name, a tool name the syntax cannot hold)."""


def function_of(tool: dict) -> dict:
    """The function of an OpenAI tool (`{"type": "function", "function": {...}}`) or a bare one."""
    return tool.get("function", tool) if isinstance(tool, dict) else {}


def call_grammar(tools: Iterable[dict], name: str | None = None, *, parallel: bool = True) -> str:
    """GBNF for a reply that is a call to one of `tools` (OpenAI-style), or to `name` only.

    `parallel`: one or more calls, else exactly one. Raises ToolChoiceError when `name` is not
    among the tools, or when no tool is left to call.
    """
    functions = [function_of(t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            raise ToolChoiceError(f"tool_choice names {name!r}, which is not among the declared tools")
    if not functions:
        raise ToolChoiceError("tool_choice asks for a tool call but no tools are declared")
    g = _Grammar()
    calls = []
    for f in functions:
        tool = f.get("name")
        if not isinstance(tool, str) or not _TOOL_NAME.fullmatch(tool):
            raise ToolChoiceError(f"the tool name {tool!r} cannot be written in Gemma 4's call syntax "
                                  "(letters, digits, _ . - only)")
        params = f.get("parameters")
        g.defs = (params.get("$defs") or params.get("definitions") or {}) if isinstance(params, dict) else {}
        args = g.object_rule(params if isinstance(params, dict) else {"type": "object", "properties": {}},
                             f"args-{_rule_name(tool)}")
        rule = g.add(f"call-{_rule_name(tool)}", f"{_lit(CALL_OPEN + 'call:' + tool)} {args} {_lit(CALL_CLOSE)}")
        calls.append(rule)
    g.add("call", " | ".join(calls))
    g.rules["root"] = "call+" if parallel else "call"
    return g.text()


# ---------------------------------------------------------------- the builder


class _Grammar:
    def __init__(self):
        self.rules: dict[str, str] = {}
        self.defs: dict = {}
        self._refs: dict[str, str] = {}  # "$ref" -> its rule (recursion)

    def text(self) -> str:
        order = ["root"] + [n for n in self.rules if n != "root"]
        return "\n".join(f"{n} ::= {self.rules[n]}" for n in order) + "\n"

    def add(self, name: str, body: str) -> str:
        """A rule for `body` (reused when an identical one exists); returns its name."""
        for existing, text in self.rules.items():
            if text == body and re.fullmatch(re.escape(name) + r"\d*", existing):
                return existing
        return self.reserve(name, body)

    def reserve(self, name: str, body: str = "") -> str:
        """A new rule named `name` (or `name2`, `name3`…) whatever the others hold."""
        base, i = name, 1
        while name in self.rules:
            i += 1
            name = f"{base}{i}"
        self.rules[name] = body
        return name

    # ---- primitives (shared rules)

    def string(self) -> str:
        if "string" not in self.rules:
            self._avoiding("str-body", FORBIDDEN)
            self.rules["string"] = f"{_lit(QUOTE)} str-body {_lit(QUOTE)}"
        return "string"

    def primitive(self, kind: str) -> str:
        bodies = {
            "integer": '"-"? ("0" | [1-9] [0-9]{0,15})',
            "natural": '"0" | [1-9] [0-9]{0,15}',
            "number": '"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?',
            "boolean": '"true" | "false"',
            "null": '"null"',
        }
        if kind == "string":
            return self.string()
        if kind not in self.rules:
            self.rules[kind] = bodies[kind]
        return kind

    def any_value(self) -> str:
        if "value" not in self.rules:
            self.rules["value"] = "object | array | string | number | boolean | null"
            self.string(), self.primitive("number"), self.primitive("boolean"), self.primitive("null")
            self.rules["key"] = f"[A-Za-z_] [A-Za-z0-9_.\\-]* | string"
            self.rules["object"] = '"{" (key ":" value ("," key ":" value)*)? "}"'
            self.rules["array"] = '"[" (value ("," value)*)? "]"'
        return "value"

    def _avoiding(self, name: str, patterns: tuple[str, ...]) -> None:
        """Rules `name` for any text without `patterns` in it (an Aho-Corasick automaton as GBNF)."""
        states = [""]  # a state is the longest tail of the text that is a proper prefix of a pattern
        prefixes = {p[:i] for p in patterns for i in range(len(p))}
        alphabet = sorted({c for p in patterns for c in p})

        def step(state: str, char: str) -> str | None:
            text = state + char
            if any(text.endswith(p) for p in patterns):
                return None
            for i in range(len(text) + 1):
                if text[i:] in prefixes:
                    return text[i:]
            return ""

        bodies: list[list[str]] = []
        i = 0
        while i < len(states):
            state, alts = states[i], []
            for char in alphabet:
                target = step(state, char)
                if target is None:
                    continue
                if target not in states:
                    states.append(target)
                alts.append(f"{_lit(char)} {name}-{states.index(target)}")
            # Any other character leads back to the start (no pattern begins with it).
            other = step(state, "\x00")
            alts.append(f"[^{''.join(_class_char(c) for c in alphabet)}] {name}-{states.index(other)}")
            bodies.append(alts)
            i += 1
        self.rules[name] = f"{name}-0"
        for n, alts in enumerate(bodies):
            self.rules[f"{name}-{n}"] = "(" + " | ".join(alts) + ")?"

    # ---- schemas

    def value_rule(self, schema: Any, hint: str) -> str:
        """A rule (or an inline expression) for values of `schema`."""
        if schema is True or not isinstance(schema, dict) or not schema:
            return self.any_value()
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            return _lit(_write(schema["const"]))
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            return self.add(f"{hint}-enum", " | ".join(_lit(_write(v)) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                alts = [self.value_rule(s, f"{hint}-{i}") for i, s in enumerate(schema[key])]
                return self.add(f"{hint}-alt", " | ".join(alts))
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            return self.value_rule(_merge([schema, *schema["allOf"]]), hint)
        kind = schema.get("type")
        if isinstance(kind, list):
            alts = [self.value_rule({**schema, "type": k}, f"{hint}-{k}") for k in kind]
            return self.add(f"{hint}-alt", " | ".join(alts))
        if kind is None:
            if "properties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.any_value()
        if kind == "object":
            return self.object_rule(schema, hint)
        if kind == "array":
            return self._array(schema, hint)
        if kind == "string":
            return self._string(schema, hint)
        if kind == "integer" and isinstance(schema.get("minimum"), (int, float)) and schema["minimum"] >= 0:
            return self.primitive("natural")
        if kind in ("integer", "number", "boolean", "null"):
            return self.primitive(kind)
        return self.any_value()

    def object_rule(self, schema: dict, hint: str) -> str:
        schema = _merge([schema, *schema.get("allOf", [])]) if isinstance(schema.get("allOf"), list) else schema
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            self.any_value()
            return "object"  # no declared properties: any object
        required = [k for k in properties if k in set(schema.get("required") or [])]
        optional = [k for k in properties if k not in required]
        pairs = {k: f"{_lit(_key(k) + ':')} {self.value_rule(properties[k], f'{hint}-{_rule_name(k)}')}" for k in properties}
        body = ' "," '.join(pairs[k] for k in required)
        if optional:
            tails = []  # tail i: a non-empty run of the optional pairs from i on, in order
            for i in reversed(range(len(optional))):
                pair = pairs[optional[i]]
                if tails:
                    tails.append(self.add(f"{hint}-rest", f'{pair} ("," {tails[-1]})? | {tails[-1]}'))
                else:
                    tails.append(self.add(f"{hint}-rest", pair))
            rest = tails[-1]
            body = f'{body} ("," {rest})?' if body else f"({rest})?"
        return self.add(hint, f'"{{" {body} "}}"' if body else '"{" "}"')

    def _array(self, schema: dict, hint: str) -> str:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            items = [self.value_rule(s, f"{hint}-{i}") for i, s in enumerate(prefix)]
            return self.add(hint, '"[" ' + ' "," '.join(items) + ' "]"')
        item = self.value_rule(schema.get("items"), f"{hint}-item")
        low = max(0, int(schema.get("minItems") or 0))
        high = schema.get("maxItems")
        high = int(high) if isinstance(high, (int, float)) else None
        if high is not None and high < low:
            high = low
        if high == 0:
            return self.add(hint, '"[" "]"')
        more = f'("," {item})' + _repeat(max(0, low - 1), None if high is None else high - 1)
        body = f"{item} {more}"
        return self.add(hint, f'"[" {body} "]"' if low >= 1 else f'"[" ({body})? "]"')

    def _string(self, schema: dict, hint: str) -> str:
        low, high = schema.get("minLength"), schema.get("maxLength")
        if not isinstance(low, int) and not isinstance(high, int):
            return self.string()
        low = max(0, low if isinstance(low, int) else 0)
        high = high if isinstance(high, int) else None
        # Bounded: characters from a plain class (no '<' or '|' at all), so the bound is exact.
        return self.add(f"{hint}-str", f"{_lit(QUOTE)} [^<|]{_repeat(low, high)} {_lit(QUOTE)}")

    def _ref(self, ref: str) -> str:
        if ref in self._refs:
            return self._refs[ref]
        match = re.fullmatch(r"#/(\$defs|definitions)/(.+)", ref) if isinstance(ref, str) else None
        target = self.defs.get(match.group(2)) if match else None
        if target is None:
            return self.any_value()
        name = self.reserve(f"ref-{_rule_name(match.group(2))}")  # now: the schema may refer to itself
        self._refs[ref] = name
        body = self.value_rule(target, f"{name}-v")
        self.rules[name] = body
        return name


# ---------------------------------------------------------------- text helpers


def _merge(schemas: list) -> dict:
    """allOf of object schemas as one: properties and required joined."""
    out: dict = {}
    for s in schemas:
        if not isinstance(s, dict):
            continue
        for k, v in s.items():
            if k == "allOf":
                continue
            if k == "properties" and isinstance(v, dict):
                out.setdefault("properties", {}).update(v)
            elif k == "required" and isinstance(v, list):
                out["required"] = list(dict.fromkeys([*out.get("required", []), *v]))
            else:
                out.setdefault(k, v)
    return out


def _repeat(low: int, high: int | None) -> str:
    if high is None:
        return f"{{{low},}}"
    return f"{{{low},{high}}}"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else QUOTE + key + QUOTE


def _write(value: Any) -> str:
    """A JSON value in Gemma 4's argument notation (keys bare where they can be)."""
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_key(str(k))}:{_write(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_write(v) for v in value) + "]"
    return json.dumps(value)


def _rule_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", str(text)).strip("-") or "x"


def _lit(text: str) -> str:
    """A GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _class_char(char: str) -> str:
    return "\\" + char if char in "]\\-^[" else char
