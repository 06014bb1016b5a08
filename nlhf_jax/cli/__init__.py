"""The commands and bench entry points, one module each: the top layer of docs/architecture.md.

A command parses its flags and calls the library; the library never imports this package. Each module's
docstring gives its usage; `common` holds what every command shares (one `error:` line for a user's mistake,
the launch flags of multi-process commands).

| console script | module |
|---|---|
| nlhf-train | train |
| nlhf-pipeline | pipeline |
| nlhf-eval | eval |
| nlhf-data | data |
| nlhf-tokenizer | tokenizer |
| nlhf-import | hf_import |
| nlhf-export | export |
| nlhf-plot | plot |
| nlhf-tabular | tabular |
| nlhf-compile | compile |
| nlhf-bench | bench |

`python -m nlhf_jax.cli.X` runs the same (and the modules without a console script: tabular_report,
online_bench, sampling_bench, tabular_bench, accelerator_bench).
"""
