"""`python -m data_prep ...` from a checkout; the code lives in `diffsal_jax.data.prep`."""
