"""Knowledge bases: embedders, the SQLite + sqlite-vec index, chunking and retrieval (issue 18)."""
