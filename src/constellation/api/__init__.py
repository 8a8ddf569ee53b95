"""The HTTP face of the platform: OpenAI-compatible routes under /v1, admin and reporting
under /api, health and metrics; wires registry, engine and economy together."""
