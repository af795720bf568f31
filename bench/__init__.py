"""roundtable bench package."""
