"""Tabular NLHF: exact preference games, the regularised Nash equilibrium, and Nash-MD and its baselines.

Modules: games (preference matrices, contexts, reference policies), exact (float64 closed forms and solvers),
algorithms (Nash-MD, OMD, Nash-EMA, self-play, best response, RLHF and the successors INPO, COMAL, SPPO,
extragradient, MPO; jit/vmap-able), bandits (IPO and DPO), nash_average, cli (`nlhf-tabular`), report (every
algorithm on several games), bench (timings). Importing the package does not change JAX's global settings; float64 is
enabled locally with `jax.enable_x64(True)` where exact checks need it.
"""
