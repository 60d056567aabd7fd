# `python -m diffsal_jax.convert`: the command users know; the code lives in
# diffsal_jax/models/torch_weights.py.
from diffsal_jax.models import torch_weights

__doc__ = torch_weights.__doc__  # absl's --help prints the __main__ module's docstring.

if __name__ == "__main__":
  torch_weights.cli()
