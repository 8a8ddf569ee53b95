"""Constellation: many specialised open models behind one OpenAI-compatible API,
with every request priced by the contributions behind it."""

__version__ = "0.1.0"
