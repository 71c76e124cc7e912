"""The options the generating commands share (`commands/options.py`): one definition, one order in every
`--help`, handed to the command as one `Common`."""

from __future__ import annotations

import typer

from gemma_cli.cli import app
from gemma_cli.commands import options as opt

GENERATING = ("chat", "describe-image", "describe-video", "transcribe", "batch", "serve")


def test_each_generating_command_ends_with_the_shared_options_in_one_order():
    group = typer.main.get_command(app)
    order = list(opt.SHARED)
    for name in GENERATING:
        params = [p.name for p in group.commands[name].params if p.name != "help"]
        shared = [p for p in params if p in opt.SHARED]
        assert shared == [p for p in order if p in shared], name
        assert params[-len(shared):] == shared, name  # after the command's own
        assert {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "ctx", "threads", "gpu_layers",
                "yes", "verbose"} <= set(shared), name


def test_a_shared_option_reads_the_same_unless_a_command_says_more():
    group = typer.main.get_command(app)
    said_more = {("transcribe", "max_tokens"), ("transcribe", "temperature"), ("batch", "model"), ("batch", "ctx"),
                 ("batch", "draft"), ("serve", "ctx"), ("serve", "verbose")}
    first: dict = {}
    for name in GENERATING:
        for p in group.commands[name].params:
            if p.name in opt.SHARED and (name, p.name) not in said_more:
                first.setdefault(p.name, (p.opts, p.help))
                assert (p.opts, p.help) == first[p.name], (name, p.name)


def test_the_command_gets_one_common_with_what_was_given():
    seen = {}

    @opt.shared("model", *opt.SAMPLING, "yes")
    def probe(word: str = "x", *, o: opt.Common) -> None:
        seen.update(word=word, o=o)

    probe(word="hi", model="e4b", max_tokens=3, temperature=None, top_p=0.5, top_k=None, seed=7, yes=True)
    o = seen["o"]
    assert seen["word"] == "hi" and (o.model, o.max_tokens, o.top_p, o.seed, o.yes) == ("e4b", 3, 0.5, 7, True)
    assert o.verbose is False and o.ctx is None  # not this command's: the default
