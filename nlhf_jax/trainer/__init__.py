"""The training run: the task registry (what each objective trains, on which data, with which step), the checks
before a run, the outer loop (resume, steps, validation, checkpoints, preemption) and its curves.

It sits above nlhf_jax.training (state, optimizers, pure steps, checkpoints, metrics) and nlhf_jax.online (the
online step and its judges), both of which it assembles; neither imports it.
"""
