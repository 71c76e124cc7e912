"""The reference chat templates beside the project (`../shared/reference/`): where they are and which file
each prompt `Variant` is checked against (`tests/test_prompt_variants.py`) and timed against
(`bench/prompt_build.py`).

Test-data knowledge, so it lives with the tests rather than in `gemma_cli`: the package recognises a
template by the sha256 of its text (`format.prompt.variant_of`) and never reads these files, which an
installed gemma does not have. Plain Python (no pytest), so a bench can import it.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference"
# prompt.VARIANTS name -> its template file under REFERENCE. A new Variant adds its line here.
FILES = {
    "2026-04": "gemma4-chat-template.jinja",
    "older": "gemma4-chat-template.older.jinja",
    "2026-07-09-large": "gemma4-chat-template-2026-07-09-large.jinja",
    "2026-07-09-small": "gemma4-chat-template-2026-07-09-small.jinja",
    "llamacpp-interleaved": "gemma4-chat-template-llamacpp-interleaved.jinja",
}
