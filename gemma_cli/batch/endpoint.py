"""The remote runner: lines sent to an OpenAI-compatible endpoint (gemma_cli.batch.remote's client and
pool), each line's Request turned into a Chat Completions body, each chat.completion back into an Answer."""

from __future__ import annotations

import base64
import json
import mimetypes
from pathlib import Path

from gemma_cli.batch import remote
from gemma_cli.batch.lines import Failure, Request
from gemma_cli.batch.output import Output
from gemma_cli.batch.records import Answer, check_json
from gemma_cli.batch.remote import RemoteError
from gemma_cli.batch.run import Defaults, Run, Signals, Summary
from gemma_cli.errors import GemmaError, MediaError
from gemma_cli.format import reply
from gemma_cli.format.conversation import to_openai
from gemma_cli.format.request import SAMPLING
from gemma_cli.media.files import read_bytes


def run_remote(endpoint, concurrency: int, source: str | Path, output: Output, defaults: Defaults, **kw) -> Summary:
    """Send the lines of `source` to an OpenAI-compatible endpoint, `concurrency` at a time.

    A server that cannot be reached before it has ever answered stops the run with that error
    (RemoteError, fatal): the lines in flight get no record, so the same command resumes."""
    run = Run(source, output, **kw)
    pool = remote.Pool(endpoint, concurrency)
    run.on_stop(pool.stop_sending)

    def tick() -> None:
        if endpoint.retried != run.summary.retried:
            run.summary.retried = endpoint.retried
            run.progress(run.summary)

    with Signals(run):
        results = pool.run(_bodies(run, defaults, endpoint), tick)
        try:
            for line, result in results:
                run.summary.retried = endpoint.retried
                if isinstance(result, RemoteError) and result.fatal:
                    pool.abandon()
                    raise result
                if isinstance(result, GemmaError):
                    run.fail(line, Failure.of(result))
                else:
                    try:
                        answer = answer_of(result, line.form, defaults.model or "")
                        if (line.request.schema is not None or line.request.json_mode) and line.form == "simple":
                            check_json(answer)
                        run.finish(line, answer)
                    except GemmaError as e:
                        run.fail(line, Failure.of(e))
                if run.stop_reason == "fail-fast":
                    pool.abandon()
                    break
        except KeyboardInterrupt:
            pool.abandon()  # requests in flight are dropped; those lines run again on resume
        finally:
            results.close()
    run.summary.retried = endpoint.retried
    return run.close()


def _bodies(run: Run, defaults: Defaults, endpoint):
    for line in run.lines():
        try:
            body = endpoint.body_of(body_for(line.request, defaults))
        except GemmaError as e:
            run.fail(line, Failure.of(e))
            continue
        yield line, body


def body_for(request: Request, defaults: Defaults) -> dict:
    """The Chat Completions body for a line: an openai line's own body, or one built from a simple line."""
    if request.body is not None:
        body = dict(request.body)
        if "model" not in body and defaults.model:
            body["model"] = defaults.model
        return body
    if request.think_budget is not None:  # refused, not ignored: no Chat Completions field for it
        raise GemmaError('"think_budget" runs on the local engine; OpenAI-compatible servers have no field for it',
                         'drop "think_budget" from the line, or run it without --endpoint')
    messages = request.messages
    if defaults.system is not None and not any(m["role"] in ("system", "developer") for m in messages):
        messages = [{"role": "system", "content": defaults.system}] + messages
    body: dict = {"messages": [_openai_message(m) for m in to_openai(messages)]}
    if defaults.model:
        body["model"] = defaults.model
    if request.tools:
        body["tools"] = request.tools
    if request.schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": request.schema}}
    elif request.json_mode:
        body["response_format"] = {"type": "json_object"}
    think = defaults.think if request.think is None else request.think
    kwargs = {"enable_thinking": True} if think else {}  # vLLM, llama-server, SGLang
    if request.keep_thinking:
        kwargs["preserve_thinking"] = True  # the template's own variable, as an openai line would send it
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    if request.stop:
        body["stop"] = list(request.stop)
    # Every sampling field the line or the command line set, by its request name: min_p and repeat_penalty are
    # llama-server's (and gemma serve's) fields, sent only when asked for, never dropped in silence.
    for key in ("max_tokens", *SAMPLING):
        value = getattr(request, key)
        value = defaults.overrides.get(key) if value is None else value
        if value is not None:
            body[key] = value
    if request.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in request.logit_bias.items()}
    return body


def _openai_message(message: dict) -> dict:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": [_openai_part(p) for p in content]}


def _openai_part(part: dict) -> dict:
    kind = part.get("type")
    if kind == "image":
        url = part.get("url") or _data_url(part.get("path"), "image")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "video":  # as vLLM takes it
        url = part.get("url") or _data_url(part.get("path"), "video")
        return {"type": "video_url", "video_url": {"url": url}}
    if kind == "audio":
        data, fmt = part.get("data"), part.get("format")
        if not data:
            source = part.get("path") or (part.get("url") or "")
            if source.startswith("data:"):
                head, _, data = source.partition(",")
                fmt = fmt or head.split("/")[-1].split(";")[0]
            else:
                path = source[len("file://"):] if source.startswith("file://") else source
                data, fmt = base64.b64encode(_read(path, "audio")).decode("ascii"), Path(path).suffix.lstrip(".") or "wav"
        return {"type": "input_audio", "input_audio": {"data": data, "format": fmt or "wav"}}
    return part


def _data_url(path: str | None, what: str) -> str:
    if not path:
        raise MediaError(f"an {what} part names no file", 'give it a "path" or a "url"')
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(_read(path, what)).decode("ascii")


def _read(path: str, what: str) -> bytes:
    return read_bytes(path, what)


def answer_of(completion: dict, form: str, model: str = "") -> Answer:
    """An endpoint's chat.completion as a batch Answer (kept whole for openai lines); a shape
    it cannot read fails that line (bad_response), not the run."""
    try:
        return _answer_of(completion, form, model)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as e:
        raise RemoteError(f"the server's chat.completion cannot be read ({type(e).__name__}: {e})",
                          "is it an OpenAI-compatible Chat Completions endpoint?", status=200, body=completion,
                          code="bad_response") from None


def _answer_of(completion: dict, form: str, model: str) -> Answer:
    choice = completion["choices"][0] if isinstance(completion["choices"][0], dict) else {}
    message = choice.get("message") or {}
    usage = completion.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    a = Answer(prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
               cached_tokens=int(details.get("cached_tokens") or 0), finish_reason=choice.get("finish_reason"),
               model=completion.get("model") or model)
    if form == "openai":
        a.completion = completion
        return a
    content = message.get("content") or ""
    if isinstance(content, list):  # some servers answer in parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    a.thinking = message.get("reasoning_content") or message.get("reasoning") or ""
    a.text = content
    if any(marker in content for marker in (reply.CHANNEL_OPEN, reply.CHANNEL_CLOSE, reply.CALL_OPEN)):
        # A server without a Gemma 4 reasoning/tool parser; its template may have prefilled the thought.
        parsed = reply.parse(content, in_thought=reply.closes_unopened_thought(content))
        a.text, a.thinking = parsed.answer, a.thinking or parsed.thinking
        a.tool_calls = [{"name": c.name, "arguments": c.arguments} for c in parsed.tool_calls]
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                pass
        a.tool_calls.append({"name": fn.get("name"), "arguments": args})
    return a
