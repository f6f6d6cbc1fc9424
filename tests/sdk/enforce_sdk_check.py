"""The official openai Python SDK reading answers that visa-proxy rewrote (started by
tests/edits.rs with a tenant whose profile keeps a value low, and an answer in which one
sentence carries it: sentence edits rewrite that answer every time, so only a rewrite passes).

Prints 'N passed, M failed' and exits non-zero on any failure.
"""
import os
import sys
import traceback

import openai

BASE_URL = os.environ["VISA_BASE_URL"]
KEY = os.environ["VISA_KEY"]
ANSWER = os.environ["VISA_ANSWER"]
TELLTALE = os.environ["VISA_TELLTALE"]
KEPT = os.environ["VISA_KEPT"].split("|")

client = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=240)
MESSAGES = [{"role": "user", "content": "How do I prepare the review?"}]


def rewritten_stream():
    pieces = [w + " " for w in ANSWER.split(" ")]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-visa-metadata": "true"},
        extra_body={"mock": {"chunks": pieces}},
    )
    assert raw.headers["x-visa-stream-mode"] == "window", raw.headers
    assert raw.headers["x-visa-profile-version"], raw.headers
    text, usage, finish, actions = "", None, [], []
    for chunk in raw.parse():
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                finish.append(c.finish_reason)
        if chunk.usage:
            usage = chunk.usage
        window = (chunk.model_extra or {}).get("visa_window")
        if window:
            actions.append(window["action"])
    assert TELLTALE not in text, text
    for kept in KEPT:
        assert kept in text, (kept, text)
    assert "rewritten" in actions, actions
    assert "blocked" not in actions and "fallback" not in actions, actions
    assert finish == ["stop"], finish
    assert usage is not None and usage.completion_tokens > 0, usage


def rewritten_json():
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_body={"mock": {"content": ANSWER}}
    )
    r = raw.parse()
    assert raw.headers["x-visa-action"] == "rewritten", raw.headers["x-visa-action"]
    text = r.choices[0].message.content
    assert text and TELLTALE not in text, text
    for kept in KEPT:
        assert kept in text, (kept, text)
    assert r.choices[0].finish_reason == "stop", r.choices[0].finish_reason


passed = failed = 0
for check in (rewritten_stream, rewritten_json):
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
