"""tandem prefill service."""
