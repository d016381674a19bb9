"""physical package."""
