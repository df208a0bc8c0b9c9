"""`python -m protege`: the same command as the installed `protege` script."""

from protege.cli import main

main()
