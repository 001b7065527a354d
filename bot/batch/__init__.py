"""Batch evaluation: run a table of cases through a template and a model, compare two runs.

table.py       JSONL/CSV/Parquet in, Parquet out (pyarrow)
checkpoint.py  the durable progress file that makes runs resumable
runner.py      one case -> one result, with bounded concurrency
job.py         a whole run: skip done rows, run the rest, write the output
model.py       settings and model for a run (``--model``, ``--async``)
compare.py     two runs side by side: summary and HTML
"""
