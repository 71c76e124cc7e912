"""The store: models on disk and what this machine can run. Never imports the engine or llama.cpp.

`models` is the wing's face (`locate` any name: registry name, path, `hf:`); `registry` holds the
Gemma 4 family as data and `names` parses model names; `files` knows the files on disk (picking
projectors and drafters); `pull` downloads and removes, over `download` (the Hub, verified);
`hardware` measures VRAM/RAM and recommends what fits; `resolution` is the `Resolved` a command
runs with; `config` the settings (flags > GEMMA_* > file > defaults); `paths` the folders.

May import: the base (`errors`, `gguf_header`). Where the store and the engine must meet, the face
(`commands/machine.py`, `commands/loading.py`) joins them.
"""
