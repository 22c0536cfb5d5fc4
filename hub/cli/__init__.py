"""`fleet`: the hub's command line."""
