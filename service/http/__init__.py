"""The ASGI layers in front of the BentoML app, outermost first: `recycle` (spread keep-alive
connections over the workers), `exposure` (Host check, API key, loopback-only without a key,
security headers), `guard` (body limits, one shape for every 4xx), `fastlane` (the
common `/predict` answered without BentoML's generic request path). `asgi` is their toolkit."""
