"""An evaluation's generations as the JSON that AlpacaEval-style evaluators read (`nlhf-eval --export_generations`).

The file is one JSON list of objects, one per policy and comparison: policies in the evaluation's order, and for
each its responses in comparison order (prompt i, sample j at index i * samples_per_prompt + j):
  {"instruction": the prompt's text, "output": the response's text, "generator": the policy's name,
   "dataset": the prompts data set's name (only when the prompts come from a built data set)}
The texts are those the evaluation sampled and judged (decoded up to the stop id), not new samples. A prompt that
is a conversation is given by the content of its last user message (single-turn instructions are what these
evaluators read); its other messages are not in the file. With samples_per_prompt > 1 an instruction appears once
per sample; AlpacaEval expects one output per instruction and generator, so export with samples_per_prompt=1.

The path is checked with the other inputs, before any model is restored (`check`): an existing file is replaced
only with --overwrite, and the file is written by rename (nlhf_jax/outputs.py).
"""
from __future__ import annotations

from nlhf_jax import outputs


def check(path: str, overwrite: bool = False) -> None:
  """Refuses an export path that is a folder, lies below a file, or exists while `overwrite` is off."""
  outputs.check_file(path, overwrite)


def instruction(prompt) -> str:
  """A prompt's text: the string itself, or a conversation's last user message (its last message without one)."""
  if isinstance(prompt, str):
    return prompt
  users = [m['content'] for m in prompt if m['role'] == 'user']
  return users[-1] if users else prompt[-1]['content']


def records(prompts: list, texts: dict[str, list[str]], dataset: str = '') -> list[dict]:
  """The export's objects: for each policy (in `texts`' order) one per response, aligned with `prompts` (the
  prompt of each comparison)."""
  out = []
  for name, responses in texts.items():
    if len(responses) != len(prompts):
      raise ValueError(f'{name}: {len(responses)} responses for {len(prompts)} prompts')
    for prompt, text in zip(prompts, responses):
      out.append({'instruction': instruction(prompt), 'output': text, 'generator': name,
                  **({'dataset': dataset} if dataset else {})})
  return out


def write(path: str, prompts: list, texts: dict[str, list[str]], dataset: str = '') -> int:
  """Writes the export (by rename); returns the number of objects."""
  recs = records(prompts, texts, dataset)
  outputs.write_json(path, recs, indent=1)
  return len(recs)
