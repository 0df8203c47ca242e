"""What training and serving must agree on, and nothing else: the image format, the drift
statistics and the model card. Both `pipelines/` and `service/` import this package; it imports
neither, so the Bento ships it without any training code."""
