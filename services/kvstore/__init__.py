"""tandem kvstore service."""
