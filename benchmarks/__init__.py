"""Same-process benchmarks of funcbp against jax.grad (and PyTorch where noted)."""
