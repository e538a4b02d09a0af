"""Where synced rows go."""
