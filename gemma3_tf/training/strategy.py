"""Which `tf.distribute` strategy a training job runs under."""

import logging

import tensorflow as tf

STRATEGIES = ("auto", "tpu", "mirrored", "default")


class TPUUnavailableError(RuntimeError):
    """The requested TPU cannot be resolved, reached or initialised."""


def connect_tpu(tpu):
    """TPUStrategy on `tpu`: a Cloud TPU name, `local` (on a TPU VM) or a `grpc://` address."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as error:  # ValueError, URLError, NotFoundError, UnimplementedError...: all mean "no TPU"
        first_line = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        raise TPUUnavailableError(
            f"Cannot use TPU {tpu or '(none named)'}: {first_line}. On a Cloud TPU VM pass --tpu local; from "
            "another machine pass the TPU's name (same project and zone) or grpc://IP:8470; without a TPU "
            "use --strategy default or mirrored."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def resolve_strategy(name="auto", tpu=None):
    """`auto`: TPUStrategy when `tpu` is given, MirroredStrategy over several GPUs, else the default."""
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {name!r}")
    if name == "tpu" or (name == "auto" and tpu):
        strategy = connect_tpu(tpu)
    elif name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("Training with %s over %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy
