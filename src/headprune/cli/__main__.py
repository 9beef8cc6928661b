"""`python -m headprune.cli`: the same as the `headprune` command."""

from .app import main

main()
