"""The Starlette application: OpenAI-shaped routes over one Scheduler.

    POST /v1/chat/completions        streamed (SSE) or not
    POST /v1/responses               OpenAI's Responses API, streamed or not (serve/responses.py)
    POST /v1/messages                Anthropic's Messages API, streamed or not (serve/messages.py)
    POST /v1/messages/count_tokens   the prompt's tokens
    POST /v1/audio/transcriptions    multipart upload; json, text, srt, vtt, verbose_json
    POST /v1/audio/translations      the same, into English
    GET  /v1/models                  the one model served (and /v1/models/ID)
    GET  /health                     {"status": "ok", ...}; never needs the key

The Responses and Messages bodies are rewritten as Chat Completions bodies and read by the one reader
(`chat.read_request`); their answers are written from the same reply events (`replies.Replies`).
Every failure is an error object in the route's API's shape (OpenAI's; Anthropic's on /v1/messages) with a 4xx/5xx status, never a traceback or a dropped
connection. A request body over `max_body` bytes is refused (413) before it is read whole.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from dataclasses import dataclass, field

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gemma_cli.engine.parallel import Finished
from gemma_cli.errors import CapabilityError, ContextOverflowError, GemmaError, GrammarError, MediaError
from gemma_cli.serve import audio
from gemma_cli.serve import messages as messages_api
from gemma_cli.serve import responses as responses_api
from gemma_cli.serve.chat import ApiError, Builder, Chunks, bad, completion, read_request, usage
from gemma_cli.serve.replies import Replies
from gemma_cli.serve.scheduler import Busy, Scheduler, ShuttingDown, Ticket


@dataclass
class Served:
    """What the app serves and how."""

    scheduler: Scheduler
    builder: Builder
    model: str  # the id in /v1/models
    aliases: set = field(default_factory=set)  # other names a request may give (file name, stem)
    api_key: str | None = None
    max_body: int = 64 * 1024 * 1024
    started: int = field(default_factory=lambda: int(time.time()))


def error(e: ApiError, shape=ApiError.body) -> JSONResponse:
    return JSONResponse(shape(e), status_code=e.status, headers=e.headers)


def create_app(served: Served) -> Starlette:
    async def health(request: Request) -> Response:
        s = served.scheduler
        return JSONResponse({"status": "ok", "model": served.model, "slots": s.n, "running": s.running,
                             "waiting": s.waiting, "completed": s.completed, "cancelled": s.cancelled})

    def card() -> dict:
        return {"id": served.model, "object": "model", "created": served.started, "owned_by": "gemma-cli"}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [card()]})

    async def model(request: Request) -> Response:
        _check_model(served, request.path_params["name"])
        return JSONResponse(card())

    async def chat_completions(request: Request) -> Response:
        body = await _json_body(request, served.max_body)
        _check_model(served, body.get("model") if isinstance(body, dict) else None)
        req = read_request(body, served.builder.settings)
        jobs = await asyncio.to_thread(served.builder.jobs, req)  # tokenizing and decoding media: off the loop
        _check_fits(served, jobs[0])
        gemma4 = served.builder.gemma4
        calls = req.tools is not None  # no tools declared, or tool_choice "none": a call is text
        one_call = req.parallel_tool_calls is False
        if len(jobs) > 1:
            return await _choices(request, served, req, jobs, calls)
        job = jobs[0]
        ticket = Ticket(job, asyncio.get_running_loop())
        _submit(served.scheduler, ticket)
        if req.stream:
            # The 200 and its stream wait for the first piece: what fails before generation (the
            # prompt over the context, a media file, the grammar) is a 4xx, as without streaming.
            first = await _until_first(request, served.scheduler, ticket)
            if first is None:
                return Response(status_code=499)
            if isinstance(first, Finished):
                _raise_failure(first)
            chunks = Chunks(served.model, gemma4, req.stop, req.include_usage, job.in_thought, calls=calls,
                            one_call=one_call, logprobs=req.logprobs is not None)
            return EventStream(_events(served, ticket, chunks, first))
        done = await _until_done(request, served.scheduler, ticket)
        if done is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        _raise_failure(done)
        return JSONResponse(completion(done, served.model, gemma4, calls=calls, one_call=one_call))

    async def responses(request: Request) -> Response:
        body = await _json_body(request, served.max_body)
        chat_body = responses_api.to_chat(body)
        _check_model(served, body.get("model"))
        return await _answer(request, chat_body, responses_api.Writer(served.model, body), responses_api.sse)

    async def messages(request: Request) -> Response:
        body = await _json_body(request, served.max_body)
        chat_body = messages_api.to_chat(body)
        _check_model(served, body.get("model"))
        return await _answer(request, chat_body, messages_api.Writer(served.model), messages_api.sse)

    async def count_tokens(request: Request) -> Response:
        body = await _json_body(request, served.max_body)
        chat_body = messages_api.to_chat(body, count_only=True)
        _check_model(served, body.get("model"))
        job = await asyncio.to_thread(served.builder.job, read_request(chat_body, served.builder.settings))
        return JSONResponse({"input_tokens": len(job.prompt)})

    async def _answer(request: Request, chat_body: dict, writer, sse) -> Response:
        """A Responses or Messages request, read as the Chat Completions request it was rewritten to."""
        req = read_request(chat_body, served.builder.settings)
        job = await asyncio.to_thread(served.builder.job, req)
        _check_fits(served, job)
        ticket = Ticket(job, asyncio.get_running_loop())
        _submit(served.scheduler, ticket)
        replies = Replies(served.builder.gemma4, req.stop, job.in_thought, req.tools, calls=req.tools is not None)
        writer.prompt_tokens = len(job.prompt)
        if req.stream:  # the 200 waits for the first piece: a failure before generation is a 4xx, as unstreamed
            first = await _until_first(request, served.scheduler, ticket)
            if first is None:
                return Response(status_code=499)
            if isinstance(first, Finished):
                _raise_failure(first)
            return EventStream(_api_events(served, ticket, replies, writer, sse, first))
        try:
            got = await _race(request, asyncio.ensure_future(_collect(ticket)))
        finally:
            served.scheduler.cancel(ticket)
        if got is None:
            return Response(status_code=499)
        pieces, done = got
        _raise_failure(done)
        writer.start()
        for piece in pieces:
            writer.feed(replies.text(piece))
        writer.feed(replies.done(done))
        writer.finish(done, replies.stop_hit)
        return JSONResponse(writer.result)

    async def transcriptions(request: Request) -> Response:
        return await _audio(request, translate=False)

    async def translations(request: Request) -> Response:
        return await _audio(request, translate=True)

    async def _audio(request: Request, translate: bool) -> Response:
        await _check_length(request, served.max_body)
        try:
            form = await request.form(max_files=1, max_fields=16, max_part_size=served.max_body)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as e:  # noqa: BLE001 - multipart's parse errors
            raise bad(f"the request is not a valid multipart/form-data upload ({e})", "file") from None
        fields = audio.read_form(form, served.builder.settings.max_media_bytes)
        _check_model(served, fields["model"])
        data = await fields["upload"].read()
        if len(data) > served.builder.settings.max_media_bytes:
            raise ApiError(413, "the audio file is over the server's media limit", param="file", code="media_too_large")
        builder = served.builder
        if not builder.gemma4:
            raise bad("transcription needs a Gemma 4 model with an audio encoder", "model", "unsupported_media")
        if builder.engine.media is None:
            raise bad("the server was started without a projector (mmproj), so it cannot hear audio", "file",
                      "unsupported_media")
        try:
            projector = builder.engine.ensure_projector("audio")
        except GemmaError as e:
            raise bad(e.message, "file", "unsupported_media") from None
        name = fields["upload"].filename or "upload"
        recording = await asyncio.to_thread(audio.load, name, data, projector.sample_rate)
        loop = asyncio.get_running_loop()
        gone = threading.Event()
        current: list[Ticket] = []

        def submit(job):  # on the worker thread: one request of the transcription, waited for
            ticket = Ticket(job, loop)
            current[:] = [ticket]
            _submit(served.scheduler, ticket)  # a full queue is a 503, raised through the waiter
            return asyncio.run_coroutine_threadsafe(ticket.result(), loop).result()

        waiter = asyncio.ensure_future(asyncio.to_thread(
            audio.transcribe, builder, submit, recording, fields["language"], translate, fields["temperature"], gone))
        try:
            result = await _race(request, waiter)
        except GemmaError as e:
            raise _api_error(e) from None
        finally:
            gone.set()
            for ticket in current:
                served.scheduler.cancel(ticket)  # a no-op once finished: frees the slot of a client gone
        if result is None:
            return Response(status_code=499)
        out, media_type = audio.render(result, recording, fields["format"], fields["language"], translate, served.model)
        if isinstance(out, dict):
            return JSONResponse(out)
        return PlainTextResponse(out, media_type=media_type)

    def guarded(handler, shape=ApiError.body):
        async def run(request: Request) -> Response:
            try:
                if served.api_key is not None:
                    _check_key(request, served.api_key)
                return await handler(request)
            except ApiError as e:
                return error(e, shape)
            except ClientDisconnect:
                return Response(status_code=499)
            except Exception as e:  # noqa: BLE001 - the boundary: an error object, never a traceback
                return error(ApiError(500, f"internal error ({type(e).__name__}: {e})", kind="server_error"), shape)
        return run

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        message = "no such endpoint" if status == 404 else "method not allowed"
        shape = messages_api.error_body if request.url.path.startswith("/v1/messages") else ApiError.body
        return error(ApiError(status, f"{message}: {request.method} {request.url.path}", code="not_found"), shape)

    async def server_error(request: Request, exc) -> Response:
        return error(ApiError(500, f"internal error ({type(exc).__name__})", kind="server_error"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/v1/models/{name:path}", guarded(model), methods=["GET"]),
        Route("/v1/chat/completions", guarded(chat_completions), methods=["POST"]),
        Route("/v1/responses", guarded(responses), methods=["POST"]),
        Route("/v1/messages", guarded(messages, messages_api.error_body), methods=["POST"]),
        Route("/v1/messages/count_tokens", guarded(count_tokens, messages_api.error_body), methods=["POST"]),
        Route("/v1/audio/transcriptions", guarded(transcriptions), methods=["POST"]),
        Route("/v1/audio/translations", guarded(translations), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: server_error})


# ---------------------------------------------------------------- pieces


def _check_key(request: Request, key: str) -> None:
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)", kind="invalid_request_error",
                       code="invalid_api_key")


DRAIN_LIMIT = 1024 * 1024 * 1024  # past this an oversized body is not read to its end: the connection is dropped


async def _too_large(request: Request, limit: int, size: int | None = None) -> ApiError:
    """The 413, after reading (and dropping) the rest of the body, so the client gets to read the answer
    instead of a reset connection."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > DRAIN_LIMIT:
            break
    what = f"{size} bytes" if size is not None else "too large"
    return ApiError(413, f"the request body is {what}, over the server's limit of {limit} bytes",
                    code="request_too_large")


async def _check_length(request: Request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise bad("Content-Length is not a number") from None
        if size > limit:
            raise await _too_large(request, limit, size)


async def _json_body(request: Request, limit: int):
    await _check_length(request, limit)
    data = bytearray()
    async for chunk in request.stream():  # a body sent without Content-Length is counted as it comes
        data += chunk
        if len(data) > limit:
            raise await _too_large(request, limit)
    try:
        return json.loads(bytes(data))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON ({e})", code="invalid_json") from None


def _check_model(served: Served, name) -> None:
    if name is None or name == "":
        return
    if not isinstance(name, str):
        raise bad("'model' must be a string", "model")
    if name != served.model and name not in served.aliases:
        raise ApiError(404, f"the model {name!r} is not served here; this server serves {served.model!r}",
                       param="model", code="model_not_found")


def _check_fits(served: Served, job) -> None:
    """A prompt longer than a sequence holds is a 400 before any stream starts (one with media is counted by
    the engine, once its media are expanded)."""
    room = getattr(served.builder.engine, "n_ctx_seq", None)
    if not job.media and isinstance(room, int) and len(job.prompt) >= room:
        raise bad(f"the prompt is {len(job.prompt)} tokens but each of the server's {served.scheduler.n} parallel "
                  f"sequences holds {room}; shorten the input, or restart gemma serve with a larger --ctx",
                  "messages", "context_length_exceeded")


def _submit(scheduler: Scheduler, ticket: Ticket) -> None:
    try:
        scheduler.submit(ticket)
    except Busy as e:
        raise ApiError(503, f"{e}; try again shortly", kind="server_error", code="server_busy",
                       headers={"Retry-After": "1"}) from None
    except ShuttingDown as e:
        raise _api_error(e) from None


def _raise_failure(done) -> None:
    """A job that failed, as the error the client gets."""
    if done.error is not None:
        raise _api_error(done.error)


def _api_error(e: GemmaError) -> ApiError:

    if isinstance(e, ContextOverflowError):
        return bad(e.message, "messages", "context_length_exceeded")
    if isinstance(e, (MediaError, CapabilityError)):
        return bad(e.message, "messages", "invalid_media")
    if isinstance(e, GrammarError):
        return bad(e.message, "grammar", "invalid_grammar")
    if isinstance(e, ShuttingDown):
        return ApiError(503, e.message, kind="server_error", code="server_shutting_down")
    return ApiError(500, e.message, kind="server_error")


async def _race(request: Request, waiter: asyncio.Future):
    """The waiter's result, or None when the client disconnects first (the waiter is cancelled)."""
    async def gone():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if waiter.done():
        return waiter.result()
    waiter.cancel()
    return None


async def _until_done(request: Request, scheduler: Scheduler, ticket: Ticket):
    try:
        return await _race(request, asyncio.ensure_future(ticket.result()))
    finally:
        scheduler.cancel(ticket)  # a no-op once finished: frees the slot of a client that left


async def _until_first(request: Request, scheduler: Scheduler, ticket: Ticket):
    """The ticket's first event (a piece of text, or its Finished), or None when the client left first."""
    first = await _race(request, asyncio.ensure_future(ticket.events.get()))
    if first is None or isinstance(first, Finished):
        scheduler.cancel(ticket)  # a no-op once finished: frees the slot of a client that left
    return first


def _line(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _fed(chunks: Chunks, event) -> list:
    """The chunks a piece of text makes (a token's logprob makes none: it waits for the next chunk)."""
    if isinstance(event, str):
        return list(chunks.text(event))
    chunks.logprob(event)
    return []


async def _choices(request: Request, served: Served, req, jobs: list, calls: bool) -> Response:
    """A request for `n` > 1 choices: its jobs run side by side (their prompt evaluated once), one choice each."""
    loop = asyncio.get_running_loop()
    tickets = [Ticket(job, loop) for job in jobs]
    try:
        for ticket in tickets:
            _submit(served.scheduler, ticket)
    except ApiError:
        for ticket in tickets:
            served.scheduler.cancel(ticket)
        raise
    gemma4, one_call = served.builder.gemma4, req.parallel_tool_calls is False
    if not req.stream:
        dones = []
        try:
            for ticket in tickets:
                done = await _until_done(request, served.scheduler, ticket)
                if done is None:
                    return Response(status_code=499)
                _raise_failure(done)
                dones.append(done)
        finally:
            for ticket in tickets:
                served.scheduler.cancel(ticket)
        return JSONResponse(completion(dones, served.model, gemma4, calls=calls, one_call=one_call))
    first = await _until_first(request, served.scheduler, tickets[0])
    if first is None or isinstance(first, Finished):
        for ticket in tickets:
            served.scheduler.cancel(ticket)
        if first is None:
            return Response(status_code=499)
        _raise_failure(first)
    shared_id = None
    chunks = []
    for i, job in enumerate(jobs):
        c = Chunks(served.model, gemma4, req.stop, False, job.in_thought, calls=calls, index=i, one_call=one_call,
                   logprobs=req.logprobs is not None, id=shared_id)
        shared_id = c.id
        chunks.append(c)
    return EventStream(_events_of_choices(served, tickets, chunks, first, req.include_usage))


async def _events_of_choices(served: Served, tickets: list, chunks: list, first, include_usage: bool):
    """SSE lines of `n` choices streamed together: each chunk names its choice's index."""
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, ticket: Ticket) -> None:
        while True:
            event = await ticket.events.get()
            merged.put_nowait((i, event))
            if isinstance(event, Finished):
                return

    merged.put_nowait((0, first))
    pumps = [asyncio.ensure_future(pump(i, t)) for i, t in enumerate(tickets) if i or not isinstance(first, Finished)]
    try:
        for c in chunks:
            yield _line(c.first())
        dones: dict[int, Finished] = {}
        while len(dones) < len(tickets):
            i, event = await merged.get()
            if not isinstance(event, Finished):
                for chunk in _fed(chunks[i], event):
                    yield _line(chunk)
                continue
            dones[i] = event
            if event.error is not None:
                try:
                    _raise_failure(event)
                except ApiError as e:
                    yield _line(e.body())
                    break
            for chunk in chunks[i].done(event):
                yield _line(chunk)
        else:
            if include_usage:
                c = chunks[0]
                yield _line({"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
                             "choices": [], "usage": usage([dones[i] for i in range(len(tickets))])})
        yield b"data: [DONE]\n\n"
    finally:
        for p in pumps:
            p.cancel()
        for ticket in tickets:
            served.scheduler.cancel(ticket)


async def _events(served: Served, ticket: Ticket, chunks: Chunks, first):
    """SSE lines of a streamed completion from its first event on; the slot is freed whenever the stream stops."""
    line = _line

    try:
        yield line(chunks.first())
        event = first
        while not isinstance(event, Finished):
            for chunk in _fed(chunks, event):
                yield line(chunk)
            event = await ticket.events.get()
        if event.error is not None:
            try:
                _raise_failure(event)
            except ApiError as e:
                yield line(e.body())
        else:
            for chunk in chunks.done(event):
                yield line(chunk)
        yield b"data: [DONE]\n\n"
    finally:
        served.scheduler.cancel(ticket)


async def _collect(ticket: Ticket) -> tuple[list[str], Finished]:
    """A job's pieces of text and its outcome (a non-streamed answer is read from the same pieces)."""
    pieces = []
    while True:
        event = await ticket.events.get()
        if isinstance(event, Finished):
            return pieces, event
        pieces.append(event)


async def _api_events(served: Served, ticket: Ticket, replies: Replies, writer, sse, first):
    """SSE events of a streamed Responses or Messages answer from the job's first event on; the slot is freed
    whenever the stream stops."""
    try:
        for event in writer.start():
            yield sse(event)
        piece = first
        while not isinstance(piece, Finished):
            for event in writer.feed(replies.text(piece)):
                yield sse(event)
            piece = await ticket.events.get()
        done = piece
        if done.error is None:
            for event in writer.feed(replies.done(done)):
                yield sse(event)
        for event in writer.finish(done, replies.stop_hit):
            yield sse(event)
    finally:
        served.scheduler.cancel(ticket)


class EventStream(StreamingResponse):
    """text/event-stream that also watches for the client leaving while nothing is sent (a long prompt)."""

    def __init__(self, content):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:

        async with anyio.create_task_group() as group:
            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:
                    pass  # the client went away mid-write
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()
