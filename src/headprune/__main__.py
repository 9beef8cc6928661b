"""`python -m headprune`: the same as the `headprune` command."""

from .cli import main

main()
