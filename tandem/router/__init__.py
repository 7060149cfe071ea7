"""OpenAI-compatible HTTP and gRPC front door, traffic control, worker selection, KV-shipping orchestration.

HTTP API (`tandem router --port P`):

- `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`
  (`stream`, `stream_options.include_usage`, `max_tokens` / `max_completion_tokens`,
  `temperature`, `top_p`, `top_k`, `seed`, `stop`, `n` = 1). Prompts are a string,
  a list of token ids, or a one-element list of either.
- Extensions, as vLLM spells them: `ignore_eos`, `min_tokens`, `stop_token_ids`;
  and `priority` (a priority class name; the `x-tandem-priority` header wins).
- `GET /health` (503 while no decode-capable worker is up), `GET /metrics`.
- Errors are OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`:
  400 malformed or unsupported (`logprobs`, `n` > 1, penalties), 404 unknown
  model, 429 a deadline the backlog makes impossible, 503 + `Retry-After` no
  worker can take the request, 502/504 a worker failed or timed out. After
  streaming has begun a failure arrives as an SSE `data: {"error": ...}` event
  followed by `data: [DONE]`.

gRPC: `tandem.v1.RouterService.Generate` on `--grpc-port`.

Module map: `api_request`/`api_response` (OpenAI bodies, pure), `errors` (the one
error -> HTTP/gRPC mapping), `priority` + `admission` + `traffic` (classes, deadline
estimate, per-class queues), `selection` (pure worker choice), `discovery` +
`registry` (where the workers are and how they are doing), `worker_client`
(protobuf stops there), `orchestrator` (colocated and disaggregated flows),
`generation` + `stop_strings` + `text_codec` (tokens -> text), `http_server`,
`grpc_server`, `service` (assembly), `command` (argv).
"""
