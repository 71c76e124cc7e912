"""`gemma serve` driven by clients nobody here wrote (issue 21): the `openai` and `anthropic` SDKs, LangChain's
`ChatOpenAI`, the OpenAI Agents SDK, litellm, `llm` and LlamaIndex's `OpenAILike`, each as a small script in a
virtualenv made once (they are test-only and would downgrade the interpreter's numpy and huggingface_hub), against
a real server on the tiny synthetic Gemma 4.

A tiny random model never calls a tool on its own: calls are forced by `tool_choice` (the server's call grammar),
and the tools take values the grammar bounds (an enum, an integer) so that a random model finishes them. Each
script prints one JSON line of what the client saw; the test checks it here."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests import synthetic
from tests.needs import virtualenv
from tests.test_serve import THOUGHT, Server

# One virtualenv for all of them (its key is this list), but LlamaIndex: its OpenAI package wants openai < 3 where
# llm and openai-agents want openai >= 3, and pip, given all, falls back to a 2024 llama-index that no longer
# imports (llama_index.agent). It gets a virtualenv of its own. The versions are the ones last tested (2026-12):
# a new release is tried by raising its pin here (a new list, a new virtualenv).
CLIENTS = ["openai==3.63.0", "anthropic==2.17.0", "langchain-openai==1.8.1", "openai-agents==0.24.0",
           "litellm==1.110.2", "llm==0.36"]
LLAMAINDEX_CLIENT = ["llama-index-llms-openai-like==0.8.1", "llama-index-core==0.14.25"]
KEY = "sekret"
MODEL = "gemma4-e"

# What every script starts with: where the server is, the forced tool's schema, and `report`, its one JSON line.
PRELUDE = r'''
import json, os, sys
URL, KEY, MODEL = os.environ["GEMMA_URL"], os.environ["GEMMA_KEY"], os.environ["GEMMA_MODEL"]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]},
                                            "days": {"type": "integer"}},
           "required": ["city", "days"], "additionalProperties": False}
THOUGHT = os.environ["GEMMA_THOUGHT"]
THEN_CALL = ('root ::= "<|channel>thought\\nLet me look.<channel|>'
             '<|tool_call>call:Weather{city:<|\\"|>Oslo<|\\"|>,days:2}<tool_call|>"')
def report(**seen):
    print(json.dumps(seen, default=str))
'''


@pytest.fixture(scope="session")
def clients(request, tmp_path_factory) -> Path:
    """The virtualenv's python, the clients installed in it."""
    return virtualenv(request, tmp_path_factory, "serve-clients", CLIENTS) / "python"


@pytest.fixture(scope="session")
def llamaindex(request, tmp_path_factory) -> Path:
    return virtualenv(request, tmp_path_factory, "serve-llamaindex", LLAMAINDEX_CLIENT) / "python"


@pytest.fixture(scope="module")
def server(e_model, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve-clients"), "-m", e_model, "--parallel", "2", "--api-key", KEY,
               "--threads", "1", "--ctx", "4096")
    yield s
    s.stop()


def run(python: Path, server: Server, script: str, tmp_path: Path, **env: str) -> dict:
    """Run `script` (after PRELUDE) in the clients' virtualenv; what it reported."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_BASE_URL", "OPENAI_API_KEY",
                                                                "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY")}
    environ.update({"GEMMA_URL": server.url, "GEMMA_KEY": KEY, "GEMMA_MODEL": MODEL, "GEMMA_THOUGHT": THOUGHT,
                    "HOME": str(home), "OPENAI_AGENTS_DISABLE_TRACING": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "TOKENIZERS_PARALLELISM": "false",
                    "GEMMA_END_OF_TURN": str(synthetic.vocab().ids["<turn|>"])}, **env)
    proc = subprocess.run([str(python), "-c", PRELUDE + textwrap.dedent(script)], capture_output=True, text=True,
                          env=environ, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-4000:]
    return json.loads(lines[-1])


def weather(arguments) -> dict:
    """A forced call's arguments, checked against the tool's schema."""
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert set(args) == {"city", "days"} and args["city"] in ("Paris", "Oslo"), args
    assert isinstance(args["days"], int) and not isinstance(args["days"], bool), args
    return args


# ---------------------------------------------------------------- the openai SDK

OPENAI = '''
import openai
from pydantic import BaseModel
from typing import Literal

class Weather(BaseModel):
    city: Literal["Paris", "Oslo"]
    days: int

client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0)
seen = {"version": openai.__version__}
# Chat Completions: a strict function tool forced with "required", streamed through the SDK's helper.
tool = openai.pydantic_function_tool(Weather, name="get_weather")
with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=[tool],
                                    tool_choice="required", parallel_tool_calls=False, max_tokens=200) as stream:
    kinds = [e.type for e in stream]
    final = stream.get_final_completion()
call = final.choices[0].message.tool_calls[0]
seen["chat_stream"] = {"finish": final.choices[0].finish_reason, "calls": len(final.choices[0].message.tool_calls),
                       "name": call.function.name, "parsed": call.function.parsed_arguments.model_dump(),
                       "events": sorted(set(kinds))}
# Structured output parsed into the model (response_format json_schema, strict).
parsed = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                       response_format=Weather, max_tokens=100)
seen["chat_parse"] = parsed.choices[0].message.parsed.model_dump()
# Responses: "required" streamed, a named function plain, text.format parsed.
tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]
events = list(client.responses.create(model=MODEL, input="Weather?", tools=tools, tool_choice="required",
                                      parallel_tool_calls=False, max_output_tokens=200, stream=True))
done = [e.item for e in events if e.type == "response.output_item.done"]
seen["responses_stream"] = {"events": [e.type for e in events], "items": [i.type for i in done],
                            "arguments": [i.arguments for i in done if i.type == "function_call"],
                            "final": events[-1].response.output[-1].type}
named = client.responses.create(model=MODEL, input="Weather?", tools=tools, max_output_tokens=200,
                                tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False)
seen["responses_named"] = [(i.type, getattr(i, "name", None), getattr(i, "arguments", None)) for i in named.output]
out = client.responses.parse(model=MODEL, input="Weather?", text_format=Weather, max_output_tokens=100)
seen["responses_parse"] = out.output_parsed.model_dump()
# The call sent back with its output: the conversation goes on.
call = [i for i in done if i.type == "function_call"][0]
follow = client.responses.create(model=MODEL, max_output_tokens=5, tools=tools, input=[
    {"role": "user", "content": "Weather?"},
    {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
    {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
seen["follow"] = follow.status
report(**seen)
'''


def test_openai_sdk_forced_calls_and_parsed_output(clients, server, tmp_path):
    seen = run(clients, server, OPENAI, tmp_path)
    chat = seen["chat_stream"]
    assert (chat["finish"], chat["calls"], chat["name"]) == ("tool_calls", 1, "get_weather")
    weather(chat["parsed"])
    assert {"tool_calls.function.arguments.delta", "tool_calls.function.arguments.done"} <= set(chat["events"])
    weather(seen["chat_parse"])
    stream = seen["responses_stream"]
    assert stream["events"][:2] == ["response.created", "response.in_progress"]
    assert stream["events"][-1] == "response.completed" and stream["items"] == ["function_call"]
    assert stream["final"] == "function_call"
    weather(stream["arguments"][0])
    [(kind, name, arguments)] = seen["responses_named"]
    assert (kind, name) == ("function_call", "get_weather")
    weather(arguments)
    weather(seen["responses_parse"])
    assert seen["follow"] in ("completed", "incomplete")


# ---------------------------------------------------------------- the anthropic SDK

ANTHROPIC = '''
import anthropic

client = anthropic.Anthropic(base_url=URL, api_key=KEY, max_retries=0)  # sends x-api-key
tools = [{"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER}]
ask = [{"role": "user", "content": "Weather in Paris?"}]
seen = {"version": anthropic.__version__}
m = client.messages.create(model=MODEL, max_tokens=200, tools=tools, messages=ask,
                           tool_choice={"type": "any", "disable_parallel_tool_use": True})
seen["any"] = {"stop": m.stop_reason, "blocks": [b.type for b in m.content],
               "input": [b.input for b in m.content if b.type == "tool_use"]}
only = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
with client.messages.stream(model=MODEL, max_tokens=200, tools=tools, messages=ask, tool_choice=only) as stream:
    kinds = [e.type for e in stream]
    final = stream.get_final_message()
use = [b for b in final.content if b.type == "tool_use"][0]
seen["tool_stream"] = {"stop": final.stop_reason, "events": kinds, "name": use.name, "input": use.input}
# Thinking streamed: the thought as thinking deltas, apart from the answer.
with client.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "2+2?"}],
                            thinking={"type": "enabled", "budget_tokens": 1024},
                            extra_body={"grammar": THOUGHT}) as stream:
    thought = "".join(e.delta.thinking for e in stream if e.type == "content_block_delta"
                      and e.delta.type == "thinking_delta")
    final = stream.get_final_message()
seen["thinking"] = {"thought": thought, "blocks": [b.type for b in final.content], "text": final.content[-1].text}
# The call answered with a tool_result: the conversation goes on.
follow = client.messages.create(model=MODEL, max_tokens=5, tools=tools, messages=ask + [
    {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": m.content[-1].id, "content": "sunny"}]}])
seen["follow"] = follow.stop_reason
seen["count"] = client.messages.count_tokens(model=MODEL, messages=ask, tools=tools).input_tokens
# Thinking and a call in one streamed reply, its blocks sent back as the SDK's own objects with the result.
thinking = {"type": "enabled", "budget_tokens": 1024}
then_call = THEN_CALL.replace("Weather", "get_weather")
with client.messages.stream(model=MODEL, max_tokens=200, tools=tools, messages=ask, thinking=thinking,
                            extra_body={"grammar": then_call}) as stream:
    deltas = sorted({e.delta.type for e in stream if e.type == "content_block_delta"})
    final = stream.get_final_message()
after = client.messages.create(model=MODEL, max_tokens=40, tools=tools, thinking=thinking, messages=ask + [
    {"role": "assistant", "content": final.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": final.content[-1].id,
                                  "content": [{"type": "text", "text": "sunny"}]}]}],
    extra_body={"grammar": 'root ::= "<|channel>thought\\nok<channel|>Sunny."'})
seen["loop"] = {"deltas": deltas, "blocks": [(b.type, getattr(b, "thinking", None) or getattr(b, "input", None))
                                             for b in final.content],
                "after": [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in after.content],
                "stop": [final.stop_reason, after.stop_reason]}
report(**seen)
'''


def test_anthropic_sdk_forced_tools_streaming_and_thinking(clients, server, tmp_path):
    seen = run(clients, server, ANTHROPIC, tmp_path)
    first = seen["any"]
    assert first["stop"] == "tool_use" and first["blocks"] == ["tool_use"]
    weather(first["input"][0])
    streamed = seen["tool_stream"]
    assert streamed["stop"] == "tool_use" and streamed["name"] == "get_weather"
    weather(streamed["input"])
    assert streamed["events"][0] == "message_start" and streamed["events"][-1] == "message_stop"
    assert "input_json" in streamed["events"]  # the SDK's own event for input_json_delta
    thinking = seen["thinking"]
    assert thinking == {"thought": "I ponder deeply", "blocks": ["thinking", "text"], "text": "The answer is four."}
    assert seen["follow"] in ("end_turn", "max_tokens")
    assert seen["count"] > 20
    loop = seen["loop"]
    assert loop["deltas"] == ["input_json_delta", "signature_delta", "thinking_delta"]
    assert loop["blocks"] == [["thinking", "Let me look."], ["tool_use", {"city": "Oslo", "days": 2}]]
    assert loop["after"] == [["thinking", "ok"], ["text", "Sunny."]] and loop["stop"] == ["tool_use", "end_turn"]


# ---------------------------------------------------------------- LangChain's ChatOpenAI

LANGCHAIN = '''
from typing import Literal
from pydantic import BaseModel
from langchain_openai import ChatOpenAI

class Weather(BaseModel):
    """The weather in a city."""
    city: Literal["Paris", "Oslo"]
    days: int

def chat(**kw):
    return ChatOpenAI(**{"model": MODEL, "base_url": URL + "/v1", "api_key": KEY, "max_retries": 0, "max_tokens": 200,
                         "temperature": 0, **kw})

seen = {}
answer = chat(max_tokens=8).invoke("Hello")
seen["plain"] = {"text": answer.content, "usage": answer.usage_metadata}
bound = chat().bind_tools([Weather], tool_choice="Weather", parallel_tool_calls=False)
seen["bind_tools"] = [(c["name"], c["args"]) for c in bound.invoke("Weather in Paris?").tool_calls]
chunks = list(chat().bind_tools([Weather], tool_choice="any", parallel_tool_calls=False).stream("Weather?"))
whole = chunks[0]
for chunk in chunks[1:]:
    whole = whole + chunk
seen["streamed"] = [(c["name"], c["args"]) for c in whole.tool_calls]
for method in ("function_calling", "json_schema"):
    seen[method] = chat().with_structured_output(Weather, method=method).invoke("Weather in Oslo?").model_dump()
# The same through the Responses API.
seen["responses"] = [(c["name"], c["args"]) for c in chat(use_responses_api=True).bind_tools(
    [Weather], tool_choice="Weather", parallel_tool_calls=False).invoke("Weather?").tool_calls]
# A thought, then a call, then the call's result sent back (with the reasoning item): a tool loop on Responses.
from langchain_core.messages import HumanMessage, ToolMessage
thinking = chat(use_responses_api=True, reasoning={"effort": "high", "summary": "auto"}).bind_tools([Weather])
ask = [HumanMessage("Weather in Oslo?")]
first = thinking.invoke(ask, extra_body={"grammar": THEN_CALL})
second = thinking.invoke(ask + [first, ToolMessage("sunny", tool_call_id=first.tool_calls[0]["id"])],
                         extra_body={"grammar": 'root ::= "Sunny."'})
chunks = list(thinking.stream(ask, extra_body={"grammar": THEN_CALL}))
whole = chunks[0]
for chunk in chunks[1:]:
    whole = whole + chunk
def blocks(message):
    return [(b["type"], [s["text"] for s in b.get("summary", [])]) for b in message.content if b["type"] != "text"]
seen["loop"] = {"first": blocks(first), "calls": [(c["name"], c["args"]) for c in first.tool_calls],
                "second": second.text, "streamed": blocks(whole),
                "streamed_calls": [c["args"] for c in whole.tool_calls]}
report(**seen)
'''


def test_langchain_bind_tools_and_structured_output(clients, server, tmp_path):
    seen = run(clients, server, LANGCHAIN, tmp_path)
    assert isinstance(seen["plain"]["text"], str) and seen["plain"]["usage"]["output_tokens"] <= 8
    for key in ("bind_tools", "streamed", "responses"):
        [(name, args)] = seen[key]
        assert name == "Weather", key
        weather(args)
    weather(seen["function_calling"])
    weather(seen["json_schema"])
    loop = seen["loop"]
    reasoning = ["reasoning", ["Let me look."]]
    assert loop["first"] == [reasoning, ["function_call", []]] and loop["calls"] == [["Weather", {"city": "Oslo",
                                                                                                  "days": 2}]]
    assert loop["second"] == "Sunny."
    assert loop["streamed"][0] == reasoning and loop["streamed_calls"] == [{"city": "Oslo", "days": 2}]


# ---------------------------------------------------------------- the OpenAI Agents SDK

AGENTS = '''
from typing import Literal
from openai import AsyncOpenAI
from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool,
                    set_default_openai_client, set_tracing_disabled)

client = AsyncOpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0)
set_default_openai_client(client, use_for_tracing=False)  # the default model: OpenAIResponsesModel
set_tracing_disabled(True)
calls = []

@function_tool
def get_weather(city: Literal["Paris", "Oslo"], days: int) -> str:
    """The weather in a city."""
    calls.append({"city": city, "days": days})
    return f"sunny in {city} for {days} days"

async def main():
    seen = {}
    # A max_output_tokens cut is response.incomplete, which the SDK raises on: the answer is made to end.
    plain = await Runner.run(Agent(name="plain", instructions="Be brief.", model=MODEL, model_settings=ModelSettings(
        max_tokens=20, extra_body={"grammar": 'root ::= "Hello there."'})), "Hello")
    seen["plain"] = {"output": plain.final_output, "ids": [r.response_id for r in plain.raw_responses]}
    settings = ModelSettings(tool_choice="required", parallel_tool_calls=False, max_tokens=200)
    agent = Agent(name="weather", instructions="Use the tool.", model=MODEL, tools=[get_weather],
                  model_settings=settings, tool_use_behavior="stop_on_first_tool")
    forced = await Runner.run(agent, "Weather in Paris?", max_turns=3)
    seen["required"] = {"output": forced.final_output, "calls": list(calls),
                        "ids": [r.response_id for r in forced.raw_responses]}
    run = Runner.run_streamed(agent, "Weather in Oslo?", max_turns=3)
    kinds = sorted({event.type async for event in run.stream_events()})
    seen["streamed"] = {"output": run.final_output, "events": kinds, "calls": list(calls)}
    # The whole loop: the call, the tool's output sent back as a function_call_output item, the model's answer
    # (tool_choice goes back to auto after a call; the end of turn pushed up, the answer ends at once).
    loop = agent.clone(tool_use_behavior="run_llm_again", model_settings=settings.resolve(
        ModelSettings(extra_body={"logit_bias": {os.environ["GEMMA_END_OF_TURN"]: 100}})))
    looped = await Runner.run(loop, "Weather in Paris?", max_turns=3)
    seen["loop"] = {"output": looped.final_output, "items": [type(i).__name__ for i in looped.new_items],
                    "turns": len(looped.raw_responses)}
    via_chat = agent.clone(model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client))
    seen["chat_completions"] = {"output": (await Runner.run(via_chat, "Weather?", max_turns=3)).final_output,
                                "calls": list(calls)}
    report(**seen)

import asyncio
asyncio.run(main())
'''


def test_openai_agents_default_responses_model_and_required(clients, server, tmp_path):
    seen = run(clients, server, AGENTS, tmp_path)
    plain = seen["plain"]
    assert plain["output"] == "Hello there." and all(i.startswith("resp_") for i in plain["ids"])  # Responses
    forced = seen["required"]
    [args] = forced["calls"]
    weather(args)  # the tool ran with what the model was made to send
    assert forced["output"] == f"sunny in {args['city']} for {args['days']} days"
    assert all(i.startswith("resp_") for i in forced["ids"])
    streamed = seen["streamed"]
    assert len(streamed["calls"]) == 2 and streamed["output"].startswith("sunny in")
    assert "raw_response_event" in streamed["events"] and "run_item_stream_event" in streamed["events"]
    loop = seen["loop"]
    assert loop["turns"] == 2 and loop["items"][:2] == ["ToolCallItem", "ToolCallOutputItem"]
    assert loop["output"] == ""
    via_chat = seen["chat_completions"]
    assert len(via_chat["calls"]) == 4 and via_chat["output"] == "sunny in {city} for {days} days".format(
        **weather(via_chat["calls"][-1]))


# ---------------------------------------------------------------- litellm

LITELLM = '''
import litellm

tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
common = dict(model="openai/" + MODEL, api_base=URL + "/v1", api_key=KEY, num_retries=0)
ask = [{"role": "user", "content": "Weather in Paris?"}]
seen = {}
plain = litellm.completion(messages=[{"role": "user", "content": "Hello"}], max_tokens=8, **common)
seen["plain"] = {"text": plain.choices[0].message.content, "usage": plain.usage.model_dump()}
forced = litellm.completion(messages=ask, tools=tools, tool_choice="required", parallel_tool_calls=False,
                            max_tokens=200, **common)
seen["forced"] = {"finish": forced.choices[0].finish_reason,
                  "calls": [(c.function.name, c.function.arguments) for c in forced.choices[0].message.tool_calls]}
chunks = list(litellm.completion(messages=ask, tools=tools, max_tokens=200, stream=True, parallel_tool_calls=False,
                                 tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                 stream_options={"include_usage": True}, **common))
rebuilt = litellm.stream_chunk_builder(chunks, messages=ask)
seen["streamed"] = {"calls": [(c.function.name, c.function.arguments) for c in rebuilt.choices[0].message.tool_calls],
                    "usage": rebuilt.usage.model_dump()}
# litellm's Responses API, to /v1/responses.
flat = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
r = litellm.responses(input="Weather?", tools=flat, tool_choice="required", parallel_tool_calls=False,
                      max_output_tokens=200, **common)
seen["responses"] = [(i.type, i.name, i.arguments) for i in r.output]
events = list(litellm.responses(input="Hello", max_output_tokens=20, stream=True,
                                extra_body={"grammar": 'root ::= "Hi there."'}, **common))
kinds = [str(getattr(e.type, "value", e.type)) for e in events]  # litellm's enum of the event types
seen["responses_stream"] = {"events": kinds, "text": "".join(e.delta for e, kind in zip(events, kinds)
                                                             if kind == "response.output_text.delta")}
report(**seen)
'''


def test_litellm_openai_prefix(clients, server, tmp_path):
    seen = run(clients, server, LITELLM, tmp_path)
    assert isinstance(seen["plain"]["text"], str) and 0 < seen["plain"]["usage"]["completion_tokens"] <= 8
    assert seen["forced"]["finish"] == "tool_calls"
    for key in ("forced", "streamed"):
        [(name, arguments)] = seen[key]["calls"]
        assert name == "get_weather", key
        weather(arguments)
    assert seen["streamed"]["usage"]["prompt_tokens"] > 10
    [(kind, name, arguments)] = seen["responses"]
    assert (kind, name) == ("function_call", "get_weather")
    weather(arguments)
    stream = seen["responses_stream"]
    assert stream["text"] == "Hi there." and stream["events"][0] == "response.created"
    assert stream["events"][-1] == "response.completed"


# ---------------------------------------------------------------- llm (Simon Willison's)

LLM = '''
import llm

model = llm.get_model("gemma")
seen = {}
response = model.prompt("Hello", max_tokens=8)
seen["streamed"] = "".join(response)  # streams by default
seen["usage"] = [response.input_tokens, response.output_tokens]
schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]},
                                           "days": {"type": "integer"}}, "required": ["city", "days"]}
seen["schema"] = json.loads(model.prompt("Weather?", schema=schema, max_tokens=100).text())
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"
# Tools declared (llm cannot force a call: the random model answers), the answer streamed through a chain.
chained = model.chain("Weather in Paris?", tools=[get_weather], options={"max_tokens": 8})
seen["chain"] = [chained.text(), [r.prompt.tools[0].name for r in chained.responses()]]
report(**seen)
'''


def test_llm_through_extra_openai_models(clients, server, tmp_path):
    user = tmp_path / "llm"
    user.mkdir()
    (user / "extra-openai-models.yaml").write_text(
        f"- model_id: gemma\n  model_name: {MODEL}\n  api_base: {server.url}/v1\n  api_key_name: gemma\n"
        "  supports_tools: true\n  supports_schema: true\n", encoding="utf-8")
    (user / "keys.json").write_text(json.dumps({"gemma": KEY}), encoding="utf-8")
    seen = run(clients, server, LLM, tmp_path, LLM_USER_PATH=str(user))
    assert isinstance(seen["streamed"], str) and seen["usage"][0] > 3 and 0 < seen["usage"][1] <= 8
    weather(seen["schema"])
    text, tools = seen["chain"]
    assert isinstance(text, str) and tools == ["get_weather"]
    # The command line too: one prompt, logged in the user folder's database.
    cli = subprocess.run([str(clients.parent / "llm"), "-m", "gemma", "-o", "max_tokens", "8", "Hello"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "LLM_USER_PATH": str(user),
                                                                           "HOME": str(tmp_path)})
    assert cli.returncode == 0, cli.stderr
    assert (user / "logs.db").is_file()


# ---------------------------------------------------------------- LlamaIndex's OpenAILike

LLAMAINDEX = '''
from typing import Literal
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

def get_weather(city: Literal["Paris", "Oslo"], days: int) -> str:
    """The weather in a city."""
    return f"sunny in {city}"

llm = OpenAILike(model=MODEL, api_base=URL + "/v1", api_key=KEY, is_chat_model=True, is_function_calling_model=True,
                 context_window=4096, max_tokens=200, max_retries=0)
tool = FunctionTool.from_defaults(fn=get_weather)
seen = {}
seen["complete"] = llm.complete("Hello", max_tokens=8).text
seen["stream"] = "".join(c.delta for c in llm.stream_chat([ChatMessage(role="user", content="Hello")], max_tokens=8))
r = llm.chat_with_tools([tool], user_msg="Weather in Paris?", tool_choice="required")
seen["forced"] = [(c.tool_name, c.tool_kwargs) for c in llm.get_tool_calls_from_response(r)]
last = None
for last in llm.stream_chat_with_tools([tool], user_msg="Weather?", tool_choice="get_weather"):
    pass
seen["streamed"] = [(c.tool_name, c.tool_kwargs) for c in llm.get_tool_calls_from_response(last)]
report(**seen)
'''


def test_llamaindex_openai_like(llamaindex, server, tmp_path):
    seen = run(llamaindex, server, LLAMAINDEX, tmp_path)
    assert isinstance(seen["complete"], str) and isinstance(seen["stream"], str)
    for key in ("forced", "streamed"):
        [(name, args)] = seen[key]
        assert name == "get_weather", key
        weather(args)
