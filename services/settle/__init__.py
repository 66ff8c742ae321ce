"""settle service."""
