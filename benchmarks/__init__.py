"""megathread_jax's benchmarks: speed against the PyTorch references, and profiles of the train steps.

Run from a checkout of the repository: `python -m benchmarks.bench --help`. The installed package
never imports this folder.
"""
