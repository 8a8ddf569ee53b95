"""Fixtures for tests, benchmarks and demos: small models built locally, never downloaded."""
