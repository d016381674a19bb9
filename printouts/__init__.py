"""printouts package."""
