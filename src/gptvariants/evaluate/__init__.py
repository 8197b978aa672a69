"""Evaluation: gptv eval's scoring, OOD and selective prediction, the experiment and its reports."""
