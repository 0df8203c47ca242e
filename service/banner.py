"""What `make serve` prints before the server starts: where to go and a request that works."""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=3000)
    port = parser.parse_args().port
    base = f"http://127.0.0.1:{port}"
    print(
        f"""
==> serving the champion on {base}
    Draw a digit:        {base}/
    API docs (Swagger):  {base}/docs      (OpenAPI spec: {base}/docs.json)
    What is served:      {base}/model     (registry version, runtime: DIGIT_RUNTIME)
    Metrics:             {base}/metrics
    Health:              {base}/livez  {base}/readyz
    Try it (a real MNIST test digit, a 7):
      curl -s -X POST {base}/predict -H 'Content-Type: application/json' -d @examples/digit-7.json
    Stop with Ctrl-C.
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
