"""The ASGI layers in front of the BentoML app, outermost first: `recycle` (spread keep-alive
connections over the workers), `guard` (body limits, one shape for every 4xx), `fastlane` (the
common `/predict` answered without BentoML's generic request path). `asgi` is their toolkit."""
