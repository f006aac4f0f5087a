"""Experiments: what a sweep ends in, and the comparisons across runs.

runs.py     read run and sweep dirs (metrics.json + .hydra/) as data: typed values, varied keys, failure records
report.py   those runs in one table; CSV, markdown and console writers
plots.py    validation curves of all runs on one axis; accuracy against parameters (PNG)
sweep.py    the Hydra callback that writes the report at the end of every `-m` sweep; failed-job records
hparams.py  the typed hyper-parameters of a run for TensorBoard's HParams tab
"""
