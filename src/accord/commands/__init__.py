"""One module per ``accord`` sub-command: ``add_parser(subparsers, help)`` and a ``run``."""
