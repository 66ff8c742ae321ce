"""filing service."""
