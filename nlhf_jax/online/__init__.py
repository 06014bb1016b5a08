"""Online NLHF: judges, the sampled-pair train steps (Nash-MD-PG, Nash-EMA-PG, SP/BR, RLHF-PG, online IPO)."""
from nlhf_jax.online.judges import JUDGE_KINDS, Judge, make_judge

__all__ = ['JUDGE_KINDS', 'Judge', 'make_judge']
