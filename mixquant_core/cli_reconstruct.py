"""CLI sub-commands of one feature (registered by mixquant_core.cli)."""


def register(subparsers, commands) -> None:
    """Add parsers to ``subparsers`` and handlers to ``commands`` (name -> fn(args))."""
