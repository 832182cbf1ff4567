"""The live session: frame sources, the loop, the session record."""
