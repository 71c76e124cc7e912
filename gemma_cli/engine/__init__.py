"""The engine: the only package that imports llama_cpp.

`core` holds the model, context, sampling and decoding; `kv` the KV cache bookkeeping
(prefix reuse, SWA checkpoints, cut, resync); `projector` (images/audio through
mtmd), `parallel` (several sequences in one context) and `draft` (speculative decoding)
build on it.
"""

from gemma_cli.engine.core import Engine, ModelInfo, Sampling, Step, TokenLogprob, set_verbose

__all__ = ["Engine", "ModelInfo", "Sampling", "Step", "TokenLogprob", "set_verbose"]
