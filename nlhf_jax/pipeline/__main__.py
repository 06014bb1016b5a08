"""`python -m nlhf_jax.pipeline` is `nlhf-pipeline`."""
from nlhf_jax.pipeline.cli import run

if __name__ == '__main__':
  run()
