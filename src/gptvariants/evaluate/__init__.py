"""Evaluation: gptv eval's scoring, OOD and selective prediction, the experiment and its reports.

evaluation   ``evaluate``: gptv eval end to end (score, summarise, ood, diversity, write the JSON)
scoring      the pass over a text into per-token statistics; ``register_token_metric`` adds one
summaries    the eval JSON's sections from those statistics, and their ``CONVENTIONS``
uncertainty  OOD detection and selective prediction
diversity    samples and their Self-BLEU / Distinct-n
result       the typed ``EvalResult`` and its one ``headline`` (console, TensorBoard/W&B, tables)
report       the column catalogue, the markdown table writer, every figure, report.md
experiment   gptv experiment: plan, train, evaluate, report
comparators  the Uncertainty section of gptv experiment --methods
"""
