from glubench.train import cli

cli()
