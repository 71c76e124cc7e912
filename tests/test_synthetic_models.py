"""The synthetic Gemma 4 GGUFs (tests/synthetic.py) load and behave like real ones in llama.cpp."""

from __future__ import annotations

import ctypes
import itertools
import time
from pathlib import Path

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import pytest
import synthetic
from llama_cpp import Llama

TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces, trailing space ",
    "line one\nline two\n\n\ttabbed",
    "Héllo wörld, ¿qué tal? Straße — “quotes” …",
    "日本語のテキストと中文 and 한국어",
    "emoji 👋🏽 🇯🇵 🧑‍💻 and math ∑∫√",
    "call:get_weather{city:Tokyo}",
    "\x00\x01 control bytes \x7f",
]


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------

def test_writing_every_file_is_fast_small_and_deterministic(tmp_path, official_template):
    start = time.process_time()  # CPU seconds of this process: another job on the machine does not count
    first = synthetic.write_all(tmp_path / "a", chat_template=official_template)
    elapsed = time.process_time() - start
    second = synthetic.write_all(tmp_path / "b", chat_template=official_template)

    assert set(first) == set(synthetic.FILES)
    assert elapsed < 2.0, f"writing all synthetic files took {elapsed:.2f} CPU seconds"
    sizes = {name: Path(p).stat().st_size for name, p in first.items()}
    assert sum(sizes.values()) < 16 * 2**20, sizes
    assert sizes["e_model"] < 3 * 2**20 and sizes["drafter"] < 2**20, sizes
    for name in first:
        assert Path(first[name]).read_bytes() == Path(second[name]).read_bytes(), name
    assert not list((tmp_path / "a").glob(".*tmp*")), "temporary files left behind"


def test_vocabulary_layout():
    v = synthetic.vocab()
    assert len(set(v.tokens)) == len(v)
    assert [v.ids[t] for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    assert (v.ids["<|turn>"], v.ids["<turn|>"], v.ids["<|think|>"]) == (105, 106, 98)
    assert (v.ids["<|channel>"], v.ids["<channel|>"], v.ids["<|tool_response>"]) == (100, 101, 50)
    assert all(f"<0x{b:02X}>" in v.ids for b in range(256))
    for t in synthetic.CONTROL_TOKENS:
        expected = synthetic.USER_DEFINED if t in synthetic.USER_DEFINED_TOKENS else synthetic.CONTROL
        assert v.types[v.ids[t]] == expected, t
    # the first merges are ASCII (see the UnicodeDecodeError pitfall in TEST_MODELS_FACTS.md)
    assert all(m.isascii() for m in v.merges[:20])
    for m in v.merges:
        left, right = m.split(" ")
        assert left in v.ids and right in v.ids and left + right in v.ids, m


@pytest.mark.parametrize(
    "overrides, match",
    [
        # shared KV layers reuse layers 1 (SWA) and 2 (full): here layer 1 is full -> llama.cpp aborts
        (dict(swa_pattern=[True, False, False, True, True, False]), "sliding then full"),
        (dict(swa_pattern=[False] * 6, shared_kv_layers=0), "at least one layer must be sliding"),
        (dict(shared_kv_layers=5, swa_pattern=[False, True, True, True, True, False]), "own their KV"),
        (dict(swa_pattern=[True, True, False, True, True, True]), "last layer must be global"),
        (dict(swa_pattern=[True, False]), "swa_pattern has 2 entries"),
        (dict(n_head=2, n_head_kv_swa=3), "multiple of n_head_kv"),
        (dict(no_such_field=1), "unknown text model parameters"),
    ],
)
def test_validation_rejects_layouts_that_would_abort(tmp_path, overrides, match):
    path = tmp_path / "bad.gguf"
    with pytest.raises(ValueError, match=match):
        synthetic.write_text_model(path, "e", chat_template=None, **overrides)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_validation_of_projectors_and_drafters(tmp_path, e_spec):
    with pytest.raises(ValueError, match="unknown kind"):
        synthetic.text_spec("moe")
    with pytest.raises(ValueError, match="n_mel_bins"):
        synthetic.write_audio_projector(tmp_path / "a.gguf", 64, n_mel_bins=300)
    with pytest.raises(ValueError, match="multiple of 4"):
        synthetic.write_vision_projector(tmp_path / "v.gguf", 64, n_embd=12, n_head=2)
    with pytest.raises(ValueError, match="must differ"):
        synthetic.write_drafter(tmp_path / "d.gguf", 32, n_embd=32)
    with pytest.raises(ValueError, match="main_hidden must equal"):
        synthetic.write_drafter(tmp_path / "d.gguf", 96, main=e_spec)
    with pytest.raises(ValueError, match="head sizes"):
        synthetic.write_drafter(tmp_path / "d.gguf", e_spec.n_embd, main=e_spec, head_dim_swa=16)
    assert not list(tmp_path.iterdir())


def test_specs_describe_the_intended_layouts(e_spec, dense_spec):
    assert e_spec.swa_pattern == (True, True, False, True, True, False)
    assert (e_spec.shared_kv_layers, e_spec.kv_layers, e_spec.n_embd_per_layer) == (3, 3, 8)
    assert dense_spec.swa_pattern == (True,) * 5 + (False,)
    assert (dense_spec.shared_kv_layers, dense_spec.n_embd_per_layer) == (0, 0)
    for s in (e_spec, dense_spec):
        assert s.context_length == 4096 and s.sliding_window <= 64 and not s.tied_output


# ---------------------------------------------------------------------------------------------
# Text models in llama.cpp
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["e", "dense"])
def text_model(request):
    spec = synthetic.text_spec(request.param)
    path = request.getfixturevalue(f"{request.param}_model")
    llm = Llama(model_path=path, n_ctx=512, n_batch=128, n_threads=2, verbose=False)
    yield spec, path, llm
    llm.close()


def test_metadata_and_sizes(text_model):
    spec, path, llm = text_model
    assert llm.metadata["general.architecture"] == "gemma4"
    assert llm.n_embd() == spec.n_embd
    assert llm.n_vocab() == len(synthetic.vocab())
    assert llama_cpp.llama_model_n_layer(llm.model) == spec.n_layer
    assert llama_cpp.llama_model_n_ctx_train(llm.model) == spec.context_length
    assert int(llm.metadata["gemma4.attention.sliding_window"]) == spec.sliding_window
    assert int(llm.metadata["gemma4.attention.shared_kv_layers"]) == spec.shared_kv_layers
    meta = synthetic.read_metadata(path)
    assert meta["gemma4.attention.sliding_window_pattern"] == list(spec.swa_pattern)
    assert meta["tokenizer.ggml.model"] == "gemma4"


def test_every_control_token_is_one_token(text_model):
    _, _, llm = text_model
    ids = synthetic.vocab().ids
    for token in synthetic.CONTROL_TOKENS:
        assert llm.tokenize(token.encode(), add_bos=False, special=True) == [ids[token]], token
        assert llm.detokenize([ids[token]], special=True) == token.encode(), token
    # without special parsing, control tokens are plain text; USER_DEFINED ones (as the converter
    # marks <|channel>, <|tool_call>, <|"|> ...) are always parsed, exactly as in real Gemma 4 GGUFs
    assert len(llm.tokenize(b"<|turn>", add_bos=False, special=False)) > 1
    assert llm.tokenize(b"<|channel>", add_bos=False, special=False) == [ids["<|channel>"]]


def test_bos_is_added(text_model):
    _, _, llm = text_model
    assert llm.tokenize(b"Paris", add_bos=True) == [2, synthetic.vocab().ids["Paris"]]


@pytest.mark.parametrize("text", TEXTS)
def test_any_utf8_round_trips(text_model, text):
    _, _, llm = text_model
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert ids and all(0 <= i < llm.n_vocab() for i in ids)
    assert llm.detokenize(ids).decode("utf-8") == text


def test_ordinary_words_are_not_bytes(text_model):
    _, _, llm = text_model
    v = synthetic.vocab()
    ids = llm.tokenize(b"The capital of France is Paris", add_bos=False)
    assert [v.tokens[i] for i in ids] == ["The", "\u2581capital", "\u2581of", "\u2581France", "\u2581is", "\u2581Paris"]
    emoji = llm.tokenize("👋".encode(), add_bos=False)
    assert [v.tokens[i] for i in emoji] == ["<0xF0>", "<0x9F>", "<0x91>", "<0x8B>"]


def test_end_of_generation_tokens(text_model):
    _, _, llm = text_model
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = synthetic.vocab().ids
    for token in synthetic.EOG_TOKENS:
        assert llama_cpp.llama_vocab_is_eog(vocab, ids[token]), token
    for token in ("<|turn>", "<bos>", "<|channel>", "<channel|>", "Paris", "\n"):
        assert not llama_cpp.llama_vocab_is_eog(vocab, ids[token]), token
    assert llama_cpp.llama_vocab_eos(vocab) == ids["<eos>"]
    assert llama_cpp.llama_vocab_bos(vocab) == ids["<bos>"]


def test_embedded_chat_template_is_the_official_one(text_model, official_template):
    _, _, llm = text_model
    assert llm.metadata["tokenizer.chat_template"] == official_template


def test_generates_varied_deterministic_tokens_past_the_sliding_window(text_model):
    spec, _, llm = text_model
    prompt = llm.tokenize(("hello world " * 80).encode(), add_bos=True)
    assert len(prompt) > 2 * spec.sliding_window
    llm.reset()
    first = list(itertools.islice(llm.generate(prompt, temp=0), 8))
    llm.reset()
    second = list(itertools.islice(llm.generate(prompt, temp=0), 8))
    assert len(first) == 8 and first == second
    assert all(0 <= t < llm.n_vocab() for t in first)
    assert len(set(first)) > 1  # untied output head: random weights do not repeat one token


def test_template_can_be_replaced_or_left_out(tmp_path):
    custom = synthetic.write_text_model(tmp_path / "custom.gguf", chat_template="{{ messages }}")
    bare = synthetic.write_text_model(tmp_path / "bare.gguf", chat_template=None)
    assert synthetic.read_metadata(custom)["tokenizer.chat_template"] == "{{ messages }}"
    assert "tokenizer.chat_template" not in synthetic.read_metadata(bare)


# ---------------------------------------------------------------------------------------------
# Projectors through mtmd
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def e_llm(e_model):
    llm = Llama(model_path=e_model, n_ctx=1024, n_batch=256, n_ubatch=256, n_threads=2, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def dense_llm(dense_model):
    llm = Llama(model_path=dense_model, n_ctx=512, n_batch=256, n_ubatch=256, n_threads=2, verbose=False)
    yield llm
    llm.close()


def _mtmd(path: str, llm: Llama):
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 2
    params.print_timings = False
    return mtmd.mtmd_init_from_file(path.encode(), llm.model, params)


@pytest.mark.parametrize(
    "mmproj, vision, audio",
    [
        ("vision_mmproj", True, False),
        ("audio_mmproj", False, True),
        ("av_mmproj", True, True),
        ("unified_mmproj", True, True),
    ],
)
def test_projectors_load_for_the_e_model(request, e_llm, mmproj, vision, audio):
    ctx = _mtmd(request.getfixturevalue(mmproj), e_llm)
    assert ctx, f"mtmd_init_from_file failed for {mmproj}"
    try:
        assert mtmd.mtmd_support_vision(ctx) is vision
        assert mtmd.mtmd_support_audio(ctx) is audio
        if audio:
            assert mtmd.mtmd_get_audio_sample_rate(ctx) == 16000
    finally:
        mtmd.mtmd_free(ctx)


def test_dense_projector_fits_only_the_dense_model(dense_llm, e_llm, dense_vision_mmproj):
    ctx = _mtmd(dense_vision_mmproj, dense_llm)
    assert ctx
    try:
        assert mtmd.mtmd_support_vision(ctx) and not mtmd.mtmd_support_audio(ctx)
    finally:
        mtmd.mtmd_free(ctx)
    # projection width 96 vs hidden 64: a clean NULL ("mismatch between text model"), not an abort
    assert not _mtmd(dense_vision_mmproj, e_llm)


def test_combined_projector_encodes_an_image_and_audio(e_llm, av_mmproj):
    ctx = _mtmd(av_mmproj, e_llm)
    assert ctx
    bitmaps = []
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        bitmaps.append(mtmd.mtmd_bitmap_init(64, 48, (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes())))
        wave = (0.1 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        samples = (ctypes.c_float * wave.size).from_buffer_copy(wave.tobytes())
        bitmaps.append(mtmd.mtmd_bitmap_init_from_audio(wave.size, samples))
        marker = mtmd.mtmd_default_marker()
        text = b"<|turn>user\n" + marker + marker + b"What is this?<turn|>\n<|turn>model\n"
        inp = mtmd.mtmd_input_text(text=text, text_len=len(text), add_special=True, parse_special=True)
        array = (mtmd.mtmd_bitmap_p_ctypes * 2)(*bitmaps)
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), array, 2) == 0
        kinds = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kinds.append((mtmd.mtmd_input_chunk_get_type(chunk), mtmd.mtmd_input_chunk_get_n_tokens(chunk)))
        media = [k for k in kinds if k[0] != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT]
        # facts: 64x48 image -> 80 tokens, 1 s of audio -> 25 tokens
        assert media == [(mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE, 80), (mtmd.MTMD_INPUT_CHUNK_TYPE_AUDIO, 25)]
        e_llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(e_llm.ctx), True)
        n_past = llama_cpp.llama_pos(0)
        # hidden 64 is not E2B/E4B: image attention is non-causal, so n_batch (256) >= 80 image tokens
        assert mtmd.mtmd_helper_eval_chunks(ctx, e_llm.ctx, chunks, 0, 0, 256, True, ctypes.byref(n_past)) == 0
        assert n_past.value == sum(n for _, n in kinds)
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        for b in bitmaps:
            mtmd.mtmd_bitmap_free(b)
        mtmd.mtmd_free(ctx)


# ---------------------------------------------------------------------------------------------
# MTP drafter
# ---------------------------------------------------------------------------------------------

def _meta(model, key: str) -> str:
    buf = ctypes.create_string_buffer(512)
    assert llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf)) >= 0, key
    return buf.value.decode()


@pytest.fixture(scope="module")
def loaded_models(e_model, drafter, wrong_drafter):
    params = llama_cpp.llama_model_default_params()
    models = {name: llama_cpp.llama_model_load_from_file(path.encode(), params)
              for name, path in (("main", e_model), ("drafter", drafter), ("wrong", wrong_drafter))}
    yield models
    for m in models.values():
        if m:
            llama_cpp.llama_model_free(m)


def test_drafters_load_as_gemma4_assistant(loaded_models, e_spec):
    main = loaded_models["main"]
    assert all(loaded_models.values())
    for name in ("drafter", "wrong"):
        d = loaded_models[name]
        assert _meta(d, "general.architecture") == "gemma4-assistant"
        assert llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(d)) == \
            llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(main))
    assert int(_meta(loaded_models["drafter"], "gemma4-assistant.embedding_length_out")) == e_spec.n_embd
    assert int(_meta(loaded_models["wrong"], "gemma4-assistant.embedding_length_out")) != e_spec.n_embd
    assert llama_cpp.llama_model_n_embd_inp(loaded_models["drafter"]) == llama_cpp.llama_model_n_embd(main)


def test_drafter_opens_an_mtp_context_on_the_main_one(loaded_models):
    # only the matching drafter: a wrong-size one aborts llama.cpp while building its graph
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 256, 64, 64, 2, 2
    main_ctx = llama_cpp.llama_init_from_model(loaded_models["main"], cp)
    assert main_ctx
    try:
        dp = llama_cpp.llama_context_default_params()
        dp.n_ctx, dp.n_batch, dp.n_ubatch, dp.n_threads, dp.n_threads_batch = 256, 64, 64, 2, 2
        assert not llama_cpp.llama_init_from_model(loaded_models["drafter"], dp)  # needs ctx_other
        dp.ctx_other = main_ctx
        dp.ctx_type = llama_cpp.LLAMA_CONTEXT_TYPE_MTP
        draft_ctx = llama_cpp.llama_init_from_model(loaded_models["drafter"], dp)
        assert draft_ctx
        llama_cpp.llama_free(draft_ctx)
    finally:
        llama_cpp.llama_free(main_ctx)


def test_gemma3_base_is_a_gguf(gemma3_base):
    with open(gemma3_base, "rb") as f:
        assert f.read(4) == b"GGUF"
