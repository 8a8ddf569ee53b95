"""What exists: models, adapters, data sets, contributors, licences, lineage, terms,
tenants and API keys. No torch, no FastAPI: tables plus keyword-only repository functions."""
