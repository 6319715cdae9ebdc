"""Helpers shared by tests: import as ``from helpers.<module> import ...`` (pytest puts tests/ on sys.path)."""
