"""Security helpers that are not part of a service: the development CA."""
