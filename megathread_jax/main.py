"""Train and evaluate: python -m megathread_jax.main --config=configs/mobilevit.py[:variant] --workdir=DIR

`--help` lists the configs; `--print_config` shows the resolved fields. Exit codes: 0 done, 1 a
failure, 2 a usage error, 130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint.
"""

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "./workdir", "Directory for checkpoints, metrics and curves; rerun to resume.")
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: file.py:variant.", lock_config=True
)
flags.DEFINE_bool("print_config", False, "Print the resolved config's fields, values and meanings, then exit.")
HELP_FLAGS = {"-h", "-help", "--help", "--helpshort", "--helpfull", "-?"}


def _train() -> None:
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

    metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print("final validation: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def _run(argv: list[str]) -> None:
    from megathread_jax import command_line, config_fields
    from megathread_jax.errors import ConfigurationError

    shown = command_line.check_config_arguments(argv[1:])
    if shown is not None:
        print(shown)
        return
    try:
        unparsed = FLAGS(argv)
    except flags.Error as e:  # an unknown flag, a value of the wrong type
        raise ConfigurationError(f"{str(e).splitlines()[0]} ({command_line.PROGRAM} --help lists the flags)") from None
    if len(unparsed) > 1:
        raise ConfigurationError(f"unexpected arguments: {' '.join(unparsed[1:])}")
    if FLAGS.print_config:
        config_fields.check(FLAGS.config)
        print(config_fields.describe(FLAGS.config))
        return
    _train()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    from megathread_jax import command_line
    from megathread_jax.errors import exit_code_of

    if HELP_FLAGS & set(argv[1:]):
        print(command_line.usage())
        return 0
    return exit_code_of(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
