"""Upstream OpenAI-compatible providers: per-provider HTTP clients with a connection pool,
timeouts, a concurrency cap, safe retries and a circuit breaker (no torch, no FastAPI, no SQL).

`call.py` is the one function set the API (and later a workflow step) calls: `complete`,
`embed` and `open_stream`, each returning what the upstream produced and its usage."""
