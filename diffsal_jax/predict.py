# `python -m diffsal_jax.predict`: the command users know; the code lives in
# diffsal_jax/inference/predict.py.
from diffsal_jax.inference import predict

__doc__ = predict.__doc__  # absl's --help prints the __main__ module's docstring.

if __name__ == "__main__":
  predict.cli()
