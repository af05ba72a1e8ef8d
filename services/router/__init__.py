"""tandem router service."""
