"""roundtable sfu package."""
