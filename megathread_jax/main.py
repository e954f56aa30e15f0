"""Train and evaluate: python -m megathread_jax.main --config=configs/mobilevit.py[:variant] --workdir=DIR"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "./workdir", "Directory for checkpoints, metrics and curves; rerun to resume.")
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: file.py:variant.", lock_config=True
)
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    # tensorflow-datasets imports TensorFlow when present, and TensorFlow would grab GPU memory.
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except ImportError:
        pass

    import jax

    if FLAGS.config.compilation_cache_dir:
        # Set before anything compiles: a rerun or resume loads the compiled steps from disk.
        cache_dir = os.path.expanduser(FLAGS.config.compilation_cache_dir)
        jax.config.update("jax_compilation_cache_dir", cache_dir)

    from megathread_jax import train
    from megathread_jax.errors import UserError

    try:
        metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print("final validation: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    app.run(main)
