"""Media: files checked and decoded into what the engine's projector takes.

`files` checks a path before any model loads and reads bytes (or stdin); `images` (Pillow),
`audio` (soundfile/librosa: mono, resampled) and `video` (PyAV: frames with time stamps) decode;
`cutting` cuts long audio at its pauses; `speech` finds voice (Silero VAD) for transcripts; `parts`
turns OpenAI-style content parts into the engine's `Media`, in prompt order.

May import: the engine (only its `Media` type, lazily) and the base. Heavy decoders are imported
inside the functions that use them, so `gemma --help` stays fast.
"""
