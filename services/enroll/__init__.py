"""enroll service."""
