"""Thin typer commands; the library modules know nothing of the command line."""
