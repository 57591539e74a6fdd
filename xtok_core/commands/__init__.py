"""CLI subcommands: one module each, discovered by `xtok_core.cli`."""
