"""roundtable server package."""
