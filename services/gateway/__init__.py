"""The front door: the gRPC API, the OpenAI-compatible HTTP endpoint and the web UI."""
