"""The training side: the DVC stages fetch → prepare → train → evaluate → register (one module
each, run as `python -m pipelines.<stage>`), the helpers they share (never each other), and
`package`, which takes the registry's champion to the BentoML store (`make package`)."""

import os

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on
# AVX2-only CPUs (Zen 3) they are off, and a training step runs ~25% slower without them
# (docs/results.md#what-is-fast-on-2-cores). Set before any stage imports TensorFlow; a caller's
# TF_ENABLE_ONEDNN_OPTS=0 still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
