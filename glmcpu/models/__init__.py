"""One file per model family; each exposes a class built from (ModelFile, n_ctx, threads)."""
