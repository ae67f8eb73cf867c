from glubench.cli.main import cli

cli()
