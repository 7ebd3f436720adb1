"""One module per ``omtseg <command>`` that is not one of LightningCLI's (``fit|validate|test|predict``).

Each module has ``main(argv) -> exit code``; :data:`omtseg.cli.COMMANDS` maps command names to modules and
imports a module only when its command runs, so ``omtseg fit`` loads nothing of the others.
"""
