"""`python -m catdog` runs the CLI."""

from catdog.cli import main

main()
