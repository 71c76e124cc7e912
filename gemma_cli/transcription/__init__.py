"""The transcription job (`gemma transcribe`, `/v1/audio/*` in `gemma serve`).

`job` plans the requests (voice activity via `media.speech`, else the energy cutter), asks the
model for each and writes the cues through `format.transcript`.

May import: media, the engine, the format and the base.
"""
