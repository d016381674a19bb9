"""Model definitions and the registry."""
