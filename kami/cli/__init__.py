"""The `kami` command line: the only package that imports Typer."""
