"""Batch jobs: JSON Lines of prompts in, one result line per prompt out, crash-safe and resumable.

Input is read as a stream (`-` is stdin), one line at a time. Two forms, told apart per line:

    simple   {"id": 1, "prompt": "…"} or {"id": 1, "messages": [...]}, optional "system",
             "images", "audio", "think", "tools", "schema", "max_tokens", "temperature",
             "top_p", "top_k", "seed", "stop"
    openai   {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
             (the OpenAI Batch API's request lines, as `vllm run-batch` reads them)

A line without an id is known by its number: its records carry "id": null and "line": N (a
made-up id could be another line's real one). Output mirrors the input's form:

    simple   {"id", "answer", "thinking", "tool_calls", "usage", "finish_reason", "error"}
    openai   {"id", "custom_id", "response": {"status_code", "request_id", "body": <chat.completion>}, "error"}

Every line gets exactly one result line, in the order lines finish (not input order). A bad
line (not JSON, unknown fields, wrong types, an unreadable image, a prompt over the context,
an answer that misses its schema) gets an error record and the run goes on.

Crash safety: each result is appended with one write, flushed and fsynced. Opening the
output again repairs a torn last line (a power cut or SIGKILL mid-write) and drops error
records (those lines run again); lines whose id already has a result are skipped, so
running the same command again resumes. `restart=True` starts the file afresh.

The package, by concern: `lines` (reading and checking input lines), `records` (result records
in both forms), `output` (the crash-safe results file), `run` (defaults, accounting, signals),
`local` (the local engine's runner) and `endpoint` (the runner for an OpenAI-compatible server,
over gemma_cli.batch.remote's client).
"""

from __future__ import annotations

from gemma_cli.batch.endpoint import answer_of, body_for, run_remote
from gemma_cli.batch.lines import (
           Failure,
           Line,
           Request,
           count_lines,
           key_of,
           parse_line,
           read_lines,
)
from gemma_cli.batch.local import run_local
from gemma_cli.batch.output import Output, check_destination
from gemma_cli.batch.records import Answer, check_json, completion, record
from gemma_cli.batch.run import Defaults, Run, Summary
from gemma_cli.errors import GemmaError

__all__ = ["Answer", "Defaults", "Failure", "GemmaError", "Line", "Output", "Request", "Run", "Summary", "answer_of",
           "body_for", "check_destination", "check_json", "completion", "count_lines", "key_of", "parse_line", "read_lines", "record",
           "run_local", "run_remote"]
