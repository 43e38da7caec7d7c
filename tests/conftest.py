"""Shared fixtures, and run-time shape checking of mechheads' jaxtyping annotations.

Run-time type checking: before anything imports mechheads, jaxtyping's import hook is installed, so
every function, method and dataclass in mechheads is decorated with
``@jaxtyped(typechecker=beartype)`` while the tests run. Each call then checks its arguments and
return value against their annotations, and the named dimensions of the jaxtyping annotations
(``Float[torch.Tensor, "batch pos vocab"]``) must agree within one call (``batch`` is the same size
everywhere in the call). A wrong shape, dtype or type fails the test with a beartype error naming
the parameter. Functions nested in other functions are checked only when they have a jaxtyping
annotation (see below), which keeps the cost to a few seconds of import and a modest share of the
run time (measured: see the commit that added this).

Switch it off with ``MECHHEADS_NO_TYPECHECK=1`` (any non-empty value other than ``0``), e.g. to time
the suite, or to tell an annotation error from a real one. The hook has no effect on code outside
the test run: the package itself never installs it.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TYPECHECK = os.environ.get("MECHHEADS_NO_TYPECHECK", "") in ("", "0")
if TYPECHECK:
    import sys

    assert not any(m == "mechheads" or m.startswith("mechheads.") for m in sys.modules), (
        "mechheads was imported before tests/conftest.py could install the type-checking import hook"
    )
    import ast

    import jaxtyping
    from jaxtyping import _import_hook

    # Functions nested in functions (hook callbacks, closures) would be decorated, by beartype, each
    # time the enclosing function runs: a few ms each, thousands of times, which doubled the time of
    # some test files. They are checked only when they carry a jaxtyping annotation themselves.
    _ARRAY_TYPES = {n for n in dir(jaxtyping) if n[:1].isupper()}

    def _has_array_annotation(node: ast.FunctionDef) -> bool:
        a = node.args
        hints = [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x]
        return any(
            isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in _ARRAY_TYPES
            for h in (*hints, node.returns)
            if h is not None
            for n in ast.walk(h)
        )

    _visit = _import_hook.JaxtypingTransformer.visit_FunctionDef

    def _visit_function(self, node):
        parents = getattr(self, "_parents", [])  # jaxtyping 0.3's transformer; else decorate all
        nested = any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)) for p in parents)
        n = len(node.decorator_list)
        out = _visit(self, node)
        if nested and len(node.decorator_list) > n and not _has_array_annotation(node):
            node.decorator_list.pop()  # the @jaxtyped(typechecker=beartype) just appended
        return out

    _import_hook.JaxtypingTransformer.visit_FunctionDef = _visit_function
    # Stays installed for the whole session: mechheads' submodules are imported lazily by tests.
    jaxtyping.install_import_hook("mechheads", "beartype.beartype")

import contextlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mechheads import ArchConfig, build_model  # noqa: E402
from mechheads.model import available_backends  # noqa: E402

BACKENDS = available_backends()


@contextlib.contextmanager
def no_typecheck():
    """Run-time type checks off inside the block: for a test that passes a wrongly typed argument on
    purpose (a string outside a ``Literal``, a DataFrame for a result object) to check mechheads' own
    error message, which the checker would otherwise pre-empt."""
    if not TYPECHECK:
        yield
        return
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture(autouse=True)
def _typecheck_marker(request):
    """``@pytest.mark.no_typecheck``: the whole test is about wrongly typed input (see no_typecheck)."""
    if request.node.get_closest_marker("no_typecheck") is None:
        yield
        return
    with no_typecheck():
        yield


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
