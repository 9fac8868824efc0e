"""Command groups of the `lofi` CLI; each module defines ``register(subparsers)`` and is discovered by cli.py."""
