"""Built-in behaviour, written as plugins through the public hooks."""
