"""tandem decode service."""
