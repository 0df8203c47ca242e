"""DVC pipeline stages: fetch → prepare → train → evaluate → register (one module each)."""
