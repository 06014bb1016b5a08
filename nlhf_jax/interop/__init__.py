"""Hugging Face models in and out of runs: `nlhf-import` (a model directory -> a run every command accepts) and
`nlhf-export` (a trained run -> a model directory that transformers and vLLM load)."""
