"""The training side: the DVC stages fetch → prepare → train → evaluate → register (one module
each, run as `python -m pipelines.<stage>`), the helpers they share (never each other), and
`package`, which takes the registry's champion to the BentoML store (`make package`)."""
