"""``python -m stream.cli``: the command line."""

from stream.cli import main

main()
