"""Render a chat template embedded in a GGUF (`tokenizer.chat_template`) for non-Gemma-4 models.

A template read from a model file is untrusted code, so it only ever runs in jinja2's
`ImmutableSandboxedEnvironment`: no `__class__`/`__subclasses__` escapes, no mutation of the
lists and dicts we pass in. The environment mirrors transformers' `_compile_jinja_template`
(`trim_blocks=True, lstrip_blocks=True`, the `loopcontrols` extension, a `{% generation %}` tag that
renders its body, its `tojson`, and the `raise_exception` / `strftime_now` globals), so a template
renders here as it does on the Hub. Gemma 4 itself goes through `gemma_cli.format.prompt` instead.

jinja2 is imported inside the functions: `gemma --help` must not pay for it.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from gemma_cli.errors import GemmaError, ModelError

__all__ = ["check_template", "render_template"]

_HINT = "the model's embedded chat template cannot render this conversation; try another GGUF of the model"


class _TemplateRaised(Exception):
    """What `raise_exception(...)` in a template raises: the template's own refusal."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    # transformers' override: jinja's own tojson escapes <, >, & and ' for HTML, which would
    # change prompts; chat templates expect plain json.dumps without ASCII escaping.
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    # Compiling costs far more than rendering, and a chat session renders the same template
    # every turn.
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # transformers' `{% generation %}...{% endgeneration %}` marks assistant tokens for
        # training masks; for rendering it is just its body.
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _failure(what: str, origin: str | None) -> GemmaError:
    """A template's failure as one line: the model's embedded template, or the user's file (`origin`)."""
    if origin is None:
        return ModelError(f"the model's chat template {what}", _HINT)
    return GemmaError(f"the chat template {origin} {what}",
                      f"fix {origin}, or leave out --chat-template to use the model's own template")


def check_template(template: str, origin: str | None = None):
    """`template` compiled (cached), or a one-line error naming it (see `render_template`)."""
    # lazy: jinja2, only when a chat template renders; keeps gemma --help fast
    import jinja2

    try:
        return _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise _failure(f"is not valid Jinja (line {exc.lineno}): {_one_line(exc.message)}", origin) from exc
    except Exception as exc:  # noqa: BLE001 - anything from untrusted template source is the template's fault
        raise _failure(f"cannot be loaded: {_one_line(exc)}", origin) from exc


def render_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos: str,
    eos: str,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    origin: str | None = None,
    **extra: Any,
) -> str:
    """Render `template` (jinja, untrusted) for `messages`, sandboxed, as transformers would.

    `bos` and `eos` become `bos_token` / `eos_token`; `extra` are further template variables
    (`enable_thinking`, `documents`, ...). Any failure, from a syntax error to a blocked
    unsafe operation or the template's own `raise_exception`, becomes a one-line error: a
    `ModelError` for the model's embedded template, or, with `origin` (the file the user gave,
    `--chat-template FILE`), a `GemmaError` naming that file.
    """
    # lazy: jinja2, only when a chat template renders; keeps gemma --help fast
    from jinja2.exceptions import SecurityError

    compiled = check_template(template, origin)
    variables = {
        **extra,
        "messages": messages,
        "tools": tools,
        "bos_token": bos,
        "eos_token": eos,
        "add_generation_prompt": add_generation_prompt,
    }
    try:
        return compiled.render(**variables)
    except _TemplateRaised as exc:
        raise _failure(f"refused the conversation: {_one_line(exc)}", origin) from exc
    except SecurityError as exc:
        raise _failure(f"tried an unsafe operation (blocked): {_one_line(exc)}", origin) from exc
    except RecursionError as exc:
        raise _failure("recursed too deeply", origin) from exc
    except Exception as exc:  # noqa: BLE001 - the template is data: its TypeErrors are not our bugs
        raise _failure(f"failed: {type(exc).__name__}: {_one_line(exc)}", origin) from exc
