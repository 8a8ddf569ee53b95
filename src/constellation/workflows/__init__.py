"""Workflows: YAML/JSON documents that compose registry models into a graph of steps, checked
at registration and run step by step through the same request pipeline as single calls."""
