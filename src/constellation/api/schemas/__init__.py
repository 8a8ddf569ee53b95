"""The /api routes' request and response schemas (the OpenAI wire format is api/protocol/):
one module per routes module, per use (…In as sent, …Out as answered), so /docs shows them."""
