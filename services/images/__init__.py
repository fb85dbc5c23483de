"""Images made or gathered offline, so that a fresh checkout can train, evaluate and benchmark
without downloading anything.

- ``shapes``: the object vocabulary both generated sets draw from (one visual world).
- ``sample``: the generated unlabelled pool (`seer seed`) and photo-like JPEGs for benchmarks.
- ``labelled``: the generated labelled set (`seer seed --labelled`) for the evaluator.
- ``real``: a labelled set and a pool made of real drawings and photos from Debian packages.

None of them is on the training path: the feed reads whatever folder or bucket they wrote.
"""
