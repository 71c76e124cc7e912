"""How many tokens llama.cpp's mtmd makes of an image or a clip of audio, asked of mtmd itself
(`mtmd_input_chunk_get_n_tokens`, as tests/test_synthetic_models.py does), and how many llama.cpp's
tokenizer makes of a text; never asked of gemma: the oracle for the counts gemma reports, instead of
numbers measured once and written into the tests.
"""

from __future__ import annotations

import ctypes
import functools

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np


@functools.lru_cache(maxsize=None)
def _model(path: str):
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(path.encode("utf-8"), params)
    assert model, path
    return model  # kept for the session: a few MB of synthetic weights


@functools.lru_cache(maxsize=None)
def _context(model: str, mmproj: str, budget: int | None):
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 1
    params.print_timings = False
    params.warmup = False
    if budget is not None:  # as gemma asks: min = max, every image scaled to the budget
        params.image_min_tokens = budget
        params.image_max_tokens = budget
    ctx = mtmd.mtmd_init_from_file(mmproj.encode("utf-8"), _model(model), params)
    assert ctx, mmproj
    return ctx


def _count(model: str, mmproj: str, budget: int | None, bitmap) -> int:
    ctx = _context(str(model), str(mmproj), budget)
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        text = mtmd.mtmd_default_marker()
        inp = mtmd.mtmd_input_text(text=text, text_len=len(text), add_special=False, parse_special=True)
        array = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), array, 1) == 0
        counts = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                counts.append(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        assert len(counts) == 1, counts
        return counts[0]
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)


def image_tokens(model, mmproj, width: int, height: int, budget: int | None = None) -> int:
    """The embeddings mtmd makes of a `width` x `height` picture (its size alone decides) at `budget` tokens."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    data = (ctypes.c_uint8 * pixels.size).from_buffer_copy(pixels.tobytes())
    return _count(model, mmproj, budget, mtmd.mtmd_bitmap_init(width, height, data))


def audio_tokens(model, mmproj, samples: int) -> int:
    """The embeddings mtmd makes of `samples` samples of audio (at the encoder's rate)."""
    wave = np.zeros(samples, dtype=np.float32)
    data = (ctypes.c_float * wave.size).from_buffer_copy(wave.tobytes())
    return _count(model, mmproj, None, mtmd.mtmd_bitmap_init_from_audio(wave.size, data))


def text_tokens(model, text: str) -> int:
    """The tokens llama.cpp's tokenizer makes of `text`, special tokens parsed (`<bos>` as one)."""
    vocab = llama_cpp.llama_model_get_vocab(_model(str(model)))
    data = text.encode("utf-8")
    n = -llama_cpp.llama_tokenize(vocab, data, len(data), None, 0, False, True)
    assert n > 0, text
    return n
