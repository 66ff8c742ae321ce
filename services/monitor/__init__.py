"""monitor service."""
