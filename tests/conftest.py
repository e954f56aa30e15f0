import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN affine parameters and running statistics, so a mix-up of them shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1.0 + torch.rand(m.running_var.shape, generator=g))
    return model


def run_flax(model: nnx.Module, images_nhwc: np.ndarray) -> np.ndarray:
    """Jitted forward of an NNX model; state updates (batch statistics) are written back."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m)

    logits, new_state = forward(state, images_nhwc)
    nnx.update(model, new_state)
    return np.asarray(logits)


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def classification_loss_fn(preprocess=lambda images, key: images, label_smoothing: float = 0.0):
    """A `make_train_step` task loss: cross-entropy of the model on preprocessed batch["image"]."""
    from megathread_jax import tasks

    def loss(model, batch, key):
        logits = model(preprocess(batch["image"], key))
        return tasks.classification_loss(logits, batch["label"], label_smoothing), {}

    return loss


def flat_weights(weights_dir) -> dict[str, np.ndarray]:
    """The arrays of a directory written by `checkpoints.save_weights`, by their tree path."""
    from megathread_jax import checkpoints

    _, weights = checkpoints.read_weights(weights_dir)
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(weights)[0]}
