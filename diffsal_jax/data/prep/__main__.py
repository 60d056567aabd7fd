"""`python -m diffsal_jax.data.prep`: the same command as `python -m data_prep`."""

from diffsal_jax.data.prep import cli

if __name__ == "__main__":
  cli.cli()
