"""Experiments: what a sweep ends in, and the comparisons across runs.

report.py   read run and sweep dirs (metrics.json + .hydra/) into one table; CSV and markdown writers
plots.py    validation curves of all runs on one axis; accuracy against parameters (PNG)
sweep.py    the Hydra callback that writes the report at the end of every `-m` sweep; failed-job records
hparams.py  the typed hyper-parameters of a run for TensorBoard's HParams tab
cost.py     a trainer callback that adds the model's MACs to metrics.json
"""
