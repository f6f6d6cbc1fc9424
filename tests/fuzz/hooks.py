"""Schemathesis hooks for the API fuzz run (tests/proxy.rs): every error answer is in
OpenAI's error shape, {"error": {"message", "type", "param", "code"}}."""
import json

import schemathesis


@schemathesis.check
def openai_shaped_errors(ctx, response, case):
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"error answer {response.status_code} is not JSON: {response.content[:200]!r}") from e
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        raise AssertionError(f"error answer {response.status_code} has no `error` object: {body}")
    missing = [k for k in ("message", "type", "param", "code") if k not in err]
    if missing:
        raise AssertionError(f"error answer {response.status_code} lacks {missing}: {body}")
    if not isinstance(err["message"], str) or not err["message"]:
        raise AssertionError(f"error answer {response.status_code} has no message: {body}")
    if not isinstance(err["type"], str):
        raise AssertionError(f"error answer {response.status_code}: `type` is not a string: {body}")
    return None
