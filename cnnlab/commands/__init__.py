"""One module per `cnnlab <command>`, each with `run(cfg)`; cli.py maps command names to them."""
