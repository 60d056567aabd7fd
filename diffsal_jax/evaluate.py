# `python -m diffsal_jax.evaluate`: the command users know; the code lives in
# diffsal_jax/evaluation/evaluate.py.
from diffsal_jax.evaluation import evaluate

__doc__ = evaluate.__doc__  # absl's --help prints the __main__ module's docstring.

if __name__ == "__main__":
  evaluate.cli()
