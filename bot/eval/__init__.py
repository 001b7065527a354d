"""Prompt evaluation (``fmbot eval``): suites of cases with assertions, run through every
template version × model on the batch runner.

suite.py       the suite file: pydantic model, every problem as ``path:line:column: message``
assertions.py  what a reply is checked against (deterministic checks and the judge's rubric)
similarity.py  ``similar``: the embedder's cosine similarity, query vectors cached
grading.py     a cell's assertions graded; the judge, embedder and retriever a suite needs
cache.py       replies reused when model, rendered messages and options are the same
run.py         a whole evaluation: batch jobs per template × model × repeat, graded rows
report.py      the matrix, JUnit XML, and two runs compared
"""
