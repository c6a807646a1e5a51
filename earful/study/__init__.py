"""``earful study``: the paper's experiment as one command (plan, run, report)."""
