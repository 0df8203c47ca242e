"""`python -m bench.train_speed`: how fast one training step of a recipe runs on this machine.

Times real steps of the train stage's own model, optimizer and input pipeline (pipelines.model,
pipelines.train.epochs_dataset) on the prepared training split, and scales them to an epoch. It is
how the rows of "What is fast on 2 cores" in docs/results.md were measured; rerun it to compare
settings on your machine (interleave A and B: these machines are noisy).

    python -m bench.train_speed                                  # params.yaml as it is
    python -m bench.train_speed --set train.padding=same --set train.batch_size=256
    python -m bench.train_speed --no-determinism --threads 1
    python -m bench.train_speed --keras-bn                       # Keras' own BatchNormalization
    TF_ENABLE_ONEDNN_OPTS=0 python -m bench.train_speed          # TensorFlow's kernels, no oneDNN

Each `--set KEY=VALUE` overrides one dotted params.yaml key (VALUE is YAML). Prints one JSON line:
s/epoch, images/s, training GFLOP/s (3 × forward multiply-adds × 2 flops an image), the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import yaml

from common import cpu
from pipelines.params import Params, parse
from pipelines.paths import workspace


def with_overrides(raw: dict, sets: list[str]) -> Params:
    """params.yaml with each KEY=VALUE applied (VALUE as YAML), validated as the stages do."""
    for item in sets:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return parse(raw, "params.yaml + --set")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=60, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TF's default)")
    ap.add_argument("--inter", type=int, default=0, help="TF inter-op threads (0: TF's default)")
    ap.add_argument(
        "--keras-bn", action="store_true", help="Keras' BatchNormalization, not the fused kernel"
    )
    ap.add_argument("--no-determinism", action="store_true", help="skip enable_op_determinism")
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from pipelines import model as model_mod
    from pipelines.data import load_split
    from pipelines.train import epochs_dataset, make_deterministic

    p = with_overrides(yaml.safe_load((workspace() / "params.yaml").read_text()), args.sets)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    if args.no_determinism:
        keras.utils.set_random_seed(p.seed)
    else:
        make_deterministic(p.seed)
    x, y = load_split("train")
    net, trainer = model_mod.build(p.train, seed=p.seed, fused=not args.keras_bn)
    model_mod.compile_for_training(trainer, p.train, -(-len(y) // p.train.batch_size))
    stamps: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            stamps.append(time.perf_counter())

    steps = args.warmup + args.steps + 1
    trainer.fit(
        epochs_dataset(x, y, p.train.batch_size, p.seed, 0, 1).repeat(),
        epochs=1,
        steps_per_epoch=steps,
        verbose=0,
        callbacks=[Clock()],
    )
    per_step = (stamps[-1] - stamps[args.warmup]) / (len(stamps) - 1 - args.warmup)
    per_image = per_step / p.train.batch_size
    macs = model_mod.forward_macs(net)
    print(
        json.dumps(
            {
                "sets": args.sets,
                "threads": args.threads or "default",
                "inter_op_threads": args.inter or "default",
                "determinism": not args.no_determinism,
                "batch_norm": "keras" if args.keras_bn else "fused",
                "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1",
                "s_per_epoch": round(per_image * len(y), 1),
                "images_per_s": round(1 / per_image),
                "gflops": round(6 * macs / per_image / 1e9, 1),
                "forward_macs": macs,
                "cpu": cpu.describe(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
