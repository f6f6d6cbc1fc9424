"""The official openai Python SDK reading answers that visa-proxy rewrote (started by
tests/enforce.rs with a tenant whose profile rewrites the mock's off-profile answer).

Prints 'N passed, M failed' and exits non-zero on any failure.
"""
import os
import sys
import traceback

import openai

BASE_URL = os.environ["VISA_BASE_URL"]
KEY = os.environ["VISA_KEY"]
OFF_PROFILE = os.environ["VISA_OFF_PROFILE"]
TELLTALE = os.environ["VISA_TELLTALE"]

client = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=240)
MESSAGES = [{"role": "user", "content": "How do I succeed in business?"}]


def rewritten_stream():
    pieces = [w + " " for w in OFF_PROFILE.split(" ")]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": {"chunks": pieces}},
    )
    assert raw.headers["x-visa-stream-mode"] == "window", raw.headers
    assert raw.headers["x-visa-profile-version"], raw.headers
    text, usage, finish = "", None, []
    for chunk in raw.parse():
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.finish_reason:
                finish.append(c.finish_reason)
        if chunk.usage:
            usage = chunk.usage
    assert TELLTALE not in text, text
    assert text.strip(), "empty text"
    assert finish in (["stop"], ["content_filter"]), finish
    assert usage is not None and usage.completion_tokens > 0, usage


def rewritten_json():
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=MESSAGES, extra_body={"mock": {"content": OFF_PROFILE}}
    )
    r = raw.parse()
    action = raw.headers["x-visa-action"]
    assert action in ("rewritten", "blocked"), action
    if action == "rewritten":
        assert r.choices[0].message.content and TELLTALE not in r.choices[0].message.content
    else:
        assert r.choices[0].finish_reason == "content_filter"
        assert r.choices[0].message.refusal


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
