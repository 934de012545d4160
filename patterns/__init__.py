"""Declarative embedding-lookup patterns (data files; see patterns/README.md)."""
