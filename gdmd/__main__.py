"""``python -m gdmd``: the same as the ``gdmd`` command."""

from gdmd.cli import main

main()
