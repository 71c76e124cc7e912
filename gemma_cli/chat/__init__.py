"""The chat job: one conversation with a loaded model.

`session` holds the history, renders prompts, hands media to the engine and parses the streamed
reply into events; `tools` loads the user's tools (`--tools f.py`) and runs the calls the user
confirmed.

May import: media, the engine, the format and the base. Never the CLI or Rich: the face prints.
"""
