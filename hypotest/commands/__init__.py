"""One module per ``hypotest`` subcommand, each with ``register(subparsers)``."""
