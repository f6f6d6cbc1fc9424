"""The official openai Python SDK against a running visa-proxy (started by tests/proxy.rs).

Prints 'N passed, M failed' and exits non-zero on any failure.
"""
import json
import os
import sys
import traceback

import openai

BASE_URL = os.environ["VISA_BASE_URL"]
KEY = os.environ["VISA_KEY"]

client = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=10)
MESSAGES = [{"role": "user", "content": "hello sdk"}]


def non_streaming():
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert r.choices[0].message.content == "echo: hello sdk", r
    assert r.usage.total_tokens == 12, r.usage
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    assert raw.headers["x-request-id"], raw.headers
    assert raw.headers["x-ratelimit-remaining-requests"] == "99", raw.headers
    assert raw.parse().model == "mock-small"


def streaming_with_usage():
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello from the mock.", text
    assert usage is not None and usage.completion_tokens == 4, usage


def tool_calls():
    r = client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        extra_body={"mock": {"mode": "tool_call"}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def auth_error():
    bad = openai.OpenAI(base_url=BASE_URL, api_key="sk-not-a-tenant", max_retries=0)
    try:
        bad.chat.completions.create(model="gpt-test", messages=MESSAGES)
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        assert e.body["code"] == "invalid_api_key", e.body
        assert e.body["type"] == "authentication_error", e.body
        return
    raise AssertionError("no AuthenticationError raised")


passed = failed = 0
for check in (non_streaming, streaming_with_usage, tool_calls, auth_error):
    try:
        check()
        passed += 1
        print(f"ok   {check.__name__}")
    except Exception:  # noqa: BLE001 - report every failure
        failed += 1
        print(f"FAIL {check.__name__}")
        traceback.print_exc()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
