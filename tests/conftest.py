import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mechheads import ArchConfig, build_model  # noqa: E402
from mechheads.model import available_backends  # noqa: E402

BACKENDS = available_backends()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The models in the tests are tiny: one thread is faster than two fighting over 2 cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


TINY = ArchConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=16, d_mlp=32)
TINY_ATTN = ArchConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=16)
TINY_ROT = ArchConfig(
    n_layers=2, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=16, d_mlp=32, positional="rotary"
)


def perturbed_state(cfg: ArchConfig, seed: int = 0, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Random weights with non-trivial LayerNorm scales and biases, so conversions are fully exercised."""
    from mechheads.arch import init_state

    g = torch.Generator().manual_seed(seed + 1)
    return {
        k: v + scale * torch.randn(v.shape, generator=g) for k, v in init_state(cfg, seed, std=0.3).items()
    }


@pytest.fixture
def tiny(backend):
    return build_model(TINY, perturbed_state(TINY), backend=backend)


@pytest.fixture
def tokens():
    return torch.randint(0, TINY.d_vocab, (3, 10), generator=torch.Generator().manual_seed(5))
