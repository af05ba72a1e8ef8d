"""tandem: disaggregated, KV-aware LLM serving. Shared library of every service."""

__version__ = "0.1.0"
