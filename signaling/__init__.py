"""roundtable signaling package."""
