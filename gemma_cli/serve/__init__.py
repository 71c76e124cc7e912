"""`gemma serve`: an OpenAI-compatible HTTP server on one loaded model.

`scheduler` runs requests as parallel sequences of one engine (continuous batching, slot
KV reuse) on a thread of its own; `chat` turns Chat Completions requests into engine jobs and
their outcomes into OpenAI responses; `audio` runs transcriptions on the same prompts and
writers as `gemma transcribe`; `app` is the Starlette application (routes, errors, limits,
keys). Starlette and uvicorn are imported only here, so `gemma --help` stays fast.
"""
