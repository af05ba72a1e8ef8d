"""tandem services, one folder each."""
