"""The format: pure text in, text out. Gemma 4 prompts, replies and the files people keep.

`prompt` builds Gemma 4 prompts byte-identical to the known templates; `reply` parses a streamed
reply into thinking, answer and tool calls; `template` renders a GGUF's own template in jinja2's
sandbox; `conversation` reads and writes OpenAI chat JSON; `transcript` writes SRT/VTT/JSON;
`stop_strings` applies OpenAI `stop`; `request` reads an OpenAI chat request body into one
`ChatRequest` (its field table says what is supported, ignored or refused).

May import: the base (`errors`) only. No engine, store, jobs, CLI, Rich or llama.cpp, so every
module here is tested without a model.
"""
