"""`python -m forensics.cli`."""

from forensics.cli import main

main()
