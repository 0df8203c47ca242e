"""The BentoML service that serves the registry's champion, and the step that packages it."""
