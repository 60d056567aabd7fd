"""`python -m data_prep convert|synth|verify`: see `diffsal_jax/data/prep/cli.py`."""

from diffsal_jax.data.prep import cli

if __name__ == "__main__":
  cli.cli()
