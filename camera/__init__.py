"""camera package."""
