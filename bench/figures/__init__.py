"""One module per benchmark figure; each exposes `run(ctx)`."""
