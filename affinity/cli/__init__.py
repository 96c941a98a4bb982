"""The ``affinity`` command: one parser tree over every subcommand."""
