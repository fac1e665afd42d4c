"""lclr plugin hooks."""
