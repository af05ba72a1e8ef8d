"""tandem planner service."""
