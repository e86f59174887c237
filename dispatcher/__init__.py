"""The dispatcher: one long-running worker per Docker server (``python -m dispatcher --server NAME``)."""
