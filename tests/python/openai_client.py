"""The official OpenAI Python client against `chrysalis gateway` (run by tests/tests/gateway.rs).

usage: openai_client.py BASE_URL ok|rejected
Prints one JSON object with what it saw; exits non-zero on any unexpected result.
"""
import json
import sys

import urllib.error
import urllib.request
import openai

base, mode = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused-by-the-gateway", max_retries=0, timeout=300)
out = {}

if mode == "rejected":
    # A policy that does not match: the client gets an error, and nothing is sent.
    try:
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1",
            messages=[{"role": "user", "content": "This must never reach the enclave."}],
            max_tokens=4,
        )
        print(json.dumps({"unexpected": "a completion through an unverified enclave"}))
        sys.exit(1)
    except openai.APIStatusError as e:
        out["status"] = e.status_code
        out["code"] = e.body.get("code") if isinstance(e.body, dict) else None
    print(json.dumps(out))
    sys.exit(0)

models = client.models.list()
out["models"] = [m.id for m in models.data]
model = out["models"][0]

r = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a primary color."}],
    max_tokens=12,
    temperature=0,
)
out["chat"] = r.choices[0].message.content
out["finish_reason"] = r.choices[0].finish_reason
out["usage"] = r.usage.total_tokens

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a primary color."}],
    max_tokens=12,
    temperature=0,
    stream=True,
)
pieces = []
finish = None
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
out["stream"] = "".join(pieces)
out["stream_chunks"] = len(pieces)
out["stream_finish_reason"] = finish

c = client.completions.create(model=model, prompt="Say hello.", max_tokens=6, temperature=0)
out["completion"] = c.choices[0].text

# Bad requests: OpenAI-style errors with the right statuses, and the gateway keeps serving.
errors = {}
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}], max_tokens=2)
except openai.NotFoundError as e:
    errors["unknown_model"] = [e.status_code, e.body.get("code")]
try:
    client.chat.completions.create(model=model, messages=[], max_tokens=2)
except openai.BadRequestError as e:
    errors["empty_messages"] = [e.status_code, e.body.get("code")]
def post(path, body, headers):
    req = urllib.request.Request(base + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


for name, body, headers in [
    ("bad_json", b"{not json", {"content-type": "application/json"}),
    ("missing_messages", json.dumps({"model": model}).encode(), {"content-type": "application/json"}),
    ("bad_role", json.dumps({"model": model, "messages": [{"role": "wizard", "content": "x"}]}).encode(), {}),
    ("bad_temperature", json.dumps({"model": model, "temperature": 9, "messages": [{"role": "user", "content": "x"}]}).encode(), {}),
    ("huge_body", b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}', {}),
]:
    status, reply = post("/chat/completions", body, headers)
    err = reply.get("error", {})
    errors[name] = [status, err.get("code"), err.get("type")]
out["errors"] = errors
with urllib.request.urlopen(base + "/attestation", timeout=60) as r:
    att = json.loads(r.read())
out["attestation"] = {"verified": att.get("verified"), "platform": att.get("platform")}
print(json.dumps(out))
