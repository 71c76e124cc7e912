"""The one error type users see: a one-line message and a hint of what to do."""

from __future__ import annotations


class GemmaError(Exception):
    """A failure the user can act on. `main()` prints it as one line plus the hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(GemmaError):
    """Bad flags or arguments."""

    exit_code = 2


class ModelError(GemmaError):
    """A model file that is missing, not GGUF, damaged, or of an unsupported kind."""


class ContextOverflowError(GemmaError):
    """A prompt that does not fit the context window."""


class MediaError(GemmaError):
    """An image or audio file that cannot be read."""


class GrammarError(GemmaError):
    """An output grammar (GBNF) that llama.cpp cannot parse."""


class CapabilityError(GemmaError):
    """Asking a model for something it cannot do (audio on a vision-only model, ...)."""


class DownloadError(GemmaError):
    """A download that failed, was interrupted, or did not verify."""


class ConfigError(GemmaError):
    """An invalid config file or key."""
