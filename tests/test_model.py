import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import BACKENDS, TINY, TINY_ATTN, TINY_ROT, no_typecheck, perturbed_state
from safetensors.torch import load_file

from mechheads import HeadModel, MechheadsError, Task, build_model, wrap, zoo
from mechheads.arch import ArchConfig, ReferenceTransformer
from mechheads.engine import fused_tail
from mechheads.model import FLAG_GATED_HOOKS, hook_resid_post, hook_z


@pytest.mark.parametrize("cfg", [TINY, TINY_ATTN, TINY_ROT], ids=["mlp", "attn_only", "rotary"])
def test_backend_logits_equal_reference_forward(backend, cfg, tokens):
    state = perturbed_state(cfg, seed=3)
    model = build_model(cfg, state, backend=backend)
    with torch.no_grad():
        got = model(tokens)
        want = ReferenceTransformer(cfg, state)(tokens)
    assert (got - want).abs().max().item() < 1e-5


def test_bidirectional_attention_sees_the_future(backend):
    cfg = ArchConfig(
        n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=20, n_ctx=8, attention_dir="bidirectional"
    )
    state = perturbed_state(cfg)
    model = build_model(cfg, state, backend=backend)
    a = torch.tensor([[1, 2, 3, 4]])
    b = torch.tensor([[1, 2, 3, 9]])
    with torch.no_grad():
        assert (model(a)[0, 0] - model(b)[0, 0]).abs().max() > 1e-4  # position 0 depends on the last token
        assert (model(a) - ReferenceTransformer(cfg, state)(a)).abs().max() < 1e-5


@pytest.mark.parametrize("name", zoo.list_models())
def test_zoo_checkpoint_reproduces_reference_logits(backend, name):
    """Each backend reproduces the logits the hook-free reference forward stored at training time.

    The reference sums in a different order, so the bound is float32-relative as well as absolute
    (logits reach ~40 here); backend-vs-backend agreement is held to 1e-4 absolute below.
    """
    ref = load_file(zoo.model_dir(name) / "reference.safetensors")
    model = zoo.load(name, backend=backend)
    with torch.no_grad():
        got = model(ref["tokens"])
    torch.testing.assert_close(got, ref["logits"], atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both backends in one environment (TransformerLens 3.9)")
@pytest.mark.parametrize("name", zoo.list_models())
def test_same_zoo_logits_on_both_backends_in_process(name):
    ref = load_file(zoo.model_dir(name) / "reference.safetensors")
    with torch.no_grad():
        a = zoo.load(name, backend="hooked")(ref["tokens"])
        b = zoo.load(name, backend="bridge")(ref["tokens"])
    assert (a - b).abs().max().item() <= 1e-4


_OTHER = os.environ.get("MECHHEADS_OTHER_PYTHON")


@pytest.mark.skipif(
    not _OTHER,
    reason="set MECHHEADS_OTHER_PYTHON to a Python with the other TransformerLens major version (CI does)",
)
def test_same_zoo_logits_across_transformer_lens_versions(tmp_path):
    """Compare against a subprocess running the other TransformerLens major version."""
    script = (
        "import json,sys,torch; from mechheads import zoo; from safetensors.torch import load_file, save_file;"
        "import transformer_lens.model_bridge;"
        "out={}\n"
        "for n in zoo.list_models():\n"
        "    m=zoo.load(n); ref=load_file(zoo.model_dir(n)/'reference.safetensors')\n"
        "    with torch.no_grad(): out[n]=m(ref['tokens']).contiguous()\n"
        "    out[n+'|backend']=torch.tensor([m.backend=='hooked'])\n"
        f"save_file(out, {str(tmp_path / 'other.safetensors')!r})\n"
    )
    root = str(Path(__file__).resolve().parents[1])  # this checkout's mechheads, in the other environment
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([_OTHER, "-c", script], check=True, cwd=tmp_path, env=env)
    other = load_file(tmp_path / "other.safetensors")
    for name in zoo.list_models():
        model = zoo.load(name)
        assert bool(other[name + "|backend"]) != (model.backend == "hooked"), (
            "the other Python must run the other backend"
        )
        ref = load_file(zoo.model_dir(name) / "reference.safetensors")
        with torch.no_grad():
            here = model(ref["tokens"])
        assert (here - other[name]).abs().max().item() <= 1e-4


def test_dims_and_weights_match_canonical_state(tiny):
    state = perturbed_state(TINY)
    c = tiny.cfg
    assert (c.n_layers, c.n_heads, c.d_head, c.d_model, c.d_vocab, c.n_ctx) == (2, 3, 8, 24, 40, 16)
    for m in "QKVO":
        want = torch.stack([state[f"blocks.{l}.attn.W_{m}"] for l in range(2)])
        assert torch.allclose(getattr(tiny, f"W_{m}").detach(), want, atol=1e-6)
    assert torch.allclose(tiny.W_U.detach(), state["unembed.W_U"], atol=1e-6)


def test_final_residual_is_read_by_hook_and_gives_logits(tiny, tokens):
    state = perturbed_state(TINY)
    with torch.no_grad():
        resid = tiny.final_residual(tokens)
        ref = ReferenceTransformer(TINY, state)
        x = resid - resid.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * state["ln_final.w"] + state["ln_final.b"]
        assert torch.allclose(x @ state["unembed.W_U"], ref(tokens), atol=1e-4)
    assert resid.shape == (3, 10, 24)


def test_run_with_cache_filters_names(tiny, tokens):
    logits, cache = tiny.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(cache) == [hook_z(0), hook_z(1)]
    assert cache[hook_z(1)].shape == (3, 10, 3, 8)
    _, cache2 = tiny.run_with_cache(tokens, [hook_resid_post(0)])
    assert list(cache2) == [hook_resid_post(0)]
    with torch.no_grad():
        assert torch.allclose(logits, tiny(tokens), atol=1e-6)


def test_run_with_cache_of_every_hook_skips_flag_gated_ones(tiny, tokens):
    # the bridge refuses hook_attn_in etc. until a flag is set; "every hook" must still work
    _, cache = tiny.run_with_cache(tokens)
    assert {hook_z(0), hook_z(1), hook_resid_post(1)} <= set(cache)
    assert not [n for n in cache if n.rsplit(".", 1)[-1] in FLAG_GATED_HOOKS]
    assert set(cache) <= tiny.hook_names and len(cache) > 10


def test_unknown_hook_is_rejected_with_valid_names(tiny, tokens):
    with pytest.raises(MechheadsError, match=r"unknown hook 'blocks\.7\.attn\.hook_z'.*layers are 0\.\.1"):
        tiny.run_with_hooks(tokens, [("blocks.7.attn.hook_z", lambda z, hook: z)])
    with pytest.raises(MechheadsError, match="unknown hook"):
        tiny.run_with_cache(tokens, ["blocks.0.attn.hook_nope"])


def test_too_long_or_bad_tokens_are_rejected(tiny):
    with pytest.raises(MechheadsError, match="longer than the model's context of 16"):
        tiny(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(MechheadsError, match=r"token ids must lie in 0\.\.39"):
        tiny(torch.full((1, 3), 40))
    with pytest.raises(MechheadsError, match=r"shape \[batch, pos\]"), no_typecheck():
        tiny(torch.zeros(3, dtype=torch.long))


def test_wrap_accepts_backend_models_and_rejects_others(tiny):
    assert wrap(tiny) is tiny
    again = wrap(tiny.tl)
    assert isinstance(again, HeadModel) and again.backend == tiny.backend
    with pytest.raises(MechheadsError, match="cannot use an object of type torch.nn.modules.linear.Linear"):
        wrap(torch.nn.Linear(2, 2))
    with pytest.raises(MechheadsError, match="cannot use an object of type builtins.str"):
        wrap("gpt2")


def test_unknown_backend_is_rejected():
    with pytest.raises(
        MechheadsError, match=r"unknown backend 'jax'; valid backends: \['hooked', 'bridge'\]"
    ):
        build_model(TINY, backend="jax")


def test_model_without_heads_is_rejected(tiny):
    class Fake:
        cfg = type("C", (), dict(n_layers=2, n_heads=0, d_head=8, d_model=24, d_vocab=40, n_ctx=16))()
        hook_dict: dict = {}

    with pytest.raises(MechheadsError, match="has no attention heads"):
        HeadModel(Fake(), backend="hooked")


def test_config_rejects_bad_values():
    with pytest.raises(MechheadsError, match="d_model must be >= 4"):
        ArchConfig(n_layers=1, n_heads=1, d_model=2, d_head=2, d_vocab=5, n_ctx=4)
    with pytest.raises(MechheadsError, match="unknown ArchConfig field"):
        ArchConfig.from_dict(json.loads('{"n_layers": 1, "wat": 2}'))


def test_wrap_accepts_a_hooked_encoder():
    tl = pytest.importorskip("transformer_lens", reason="needs TransformerLens")
    try:
        from transformer_lens import HookedEncoder, HookedTransformerConfig
    except ImportError:
        pytest.skip("HookedEncoder exists only in TransformerLens 3.x (4.x uses TransformerBridge for BERT)")
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=16,
        n_ctx=8,
        d_head=4,
        n_heads=4,
        d_vocab=30,
        d_mlp=32,
        act_fn="gelu",
        attention_dir="bidirectional",
    )
    enc = wrap(HookedEncoder(cfg))
    assert enc.backend == "hooked" and enc.cfg.attention_dir == "bidirectional" and tl is not None
    tokens = torch.randint(0, 30, (2, 6))
    _, cache = enc.run_with_cache(tokens, [hook_z(0)])
    assert cache[hook_z(0)].shape == (2, 6, 4, 4)


@torch.no_grad()
def test_forward_from_a_layer_equals_the_full_forward(tiny, tokens):
    full, cache = tiny.run_with_cache(tokens, ["blocks.1.hook_resid_pre"])
    pos = torch.tensor([2, 9])
    assert torch.allclose(tiny.forward_from(tokens), full, atol=1e-5)
    assert torch.allclose(tiny.forward_from(tokens, 1, cache["blocks.1.hook_resid_pre"]), full, atol=1e-5)
    assert torch.allclose(
        tiny.forward_from(tokens, 1, cache["blocks.1.hook_resid_pre"], positions=pos), full[:, pos], atol=1e-5
    )
    fired = []
    with tiny.hooks(
        [(hook_z(0), lambda z, hook: fired.append(0)), (hook_z(1), lambda z, hook: fired.append(1))]
    ):
        tiny.forward_from(tokens, 1, cache["blocks.1.hook_resid_pre"])
    assert fired == ([1] if tiny.reuses_prefix else [0, 1])
    assert tiny.n_attached_hooks() == 0  # the bridge's early stop unwinds its hook too


TINY_3L = ArchConfig(n_layers=3, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=16, d_mlp=32)
TINY_BIDI = ArchConfig(
    n_layers=3, n_heads=2, d_model=16, d_head=8, d_vocab=40, n_ctx=16, d_mlp=16, attention_dir="bidirectional"
)
TINY_RELU_ROT = ArchConfig(
    n_layers=3,
    n_heads=2,
    d_model=16,
    d_head=8,
    d_vocab=40,
    n_ctx=16,
    d_mlp=16,
    act_fn="relu",
    positional="rotary",
)
TAIL_CFGS = [TINY, TINY_ATTN, TINY_ROT, TINY_3L, TINY_BIDI, TINY_RELU_ROT]
TAIL_IDS = ["mlp", "attn_only", "rotary", "3_layers", "bidirectional", "relu_rotary"]


@torch.no_grad()
@pytest.mark.parametrize("cfg", TAIL_CFGS, ids=TAIL_IDS)
def test_fused_tail_equals_the_backend_forward_from_every_layer(backend, cfg, tokens):
    """The hook-free tail reproduces the backend's logits from any start layer, with or without the
    clean z of the start layer, at all positions or only at read positions."""
    model = build_model(cfg, perturbed_state(cfg, seed=2), backend=backend)
    tail = fused_tail(model)
    assert tail is not None
    L = cfg.n_layers
    names = [n for l in range(L) for n in (f"blocks.{l}.hook_resid_pre", hook_z(l))]
    full, cache = model.run_with_cache(tokens, names)
    for pos in (None, torch.tensor([2, 5]), torch.tensor([0, 9])):
        want = full if pos is None else full[:, pos]
        for layer in range(L):
            r = cache[f"blocks.{layer}.hook_resid_pre"]
            for z in (None, cache[hook_z(layer)]):
                got = tail.run(r, layer, None, z, pos)
                assert got.shape == want.shape
                assert (got - want).abs().max().item() < 1e-5, (layer, pos, z is None)


@torch.no_grad()
@pytest.mark.parametrize("cfg", [TINY_3L, TINY_RELU_ROT], ids=["3_layers", "relu_rotary"])
def test_fused_tail_edit_z_equals_a_hook_z_edit(backend, cfg, tokens):
    """edit_z acts like a hook on hook_z at every layer from the start, also where the last layer
    only computes read positions."""
    model = build_model(cfg, perturbed_state(cfg, seed=4), backend=backend)
    tail = fused_tail(model)
    g = torch.Generator().manual_seed(0)
    gains = torch.rand(cfg.n_layers, cfg.n_heads, generator=g) * 2  # [layer, head]
    shift = torch.rand(tokens.shape[1], generator=g)  # [pos]: checks positions are passed right

    def edit(layer, z, pos):
        s = shift[: z.shape[1]] if pos is None else shift[pos]
        return z * gains[layer][None, None, :, None] + s[None, :, None, None]

    def hook(layer):
        return lambda z, hook: edit(layer, z, None)

    for start in range(cfg.n_layers):
        _, cache = model.run_with_cache(tokens, [f"blocks.{start}.hook_resid_pre", hook_z(start)])
        hooks = [(hook_z(l), hook(l)) for l in range(start, cfg.n_layers)]
        want = model.run_with_hooks(tokens, hooks)
        for pos in (None, torch.tensor([1, 4, 7])):
            got = tail.run(cache[f"blocks.{start}.hook_resid_pre"], start, edit, cache[hook_z(start)], pos)
            ref = want if pos is None else want[:, pos]
            assert (got - ref).abs().max().item() < 1e-5, (start, pos)


def test_fused_tail_declines_architectures_it_does_not_reproduce(backend):
    """An architecture outside the fused tail gets None from fused_tail(model) (callers then use
    hooks): ALiBi on HookedTransformer, a gated MLP on the zoo's native bridge."""
    if backend == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        tl = HookedTransformer(
            HookedTransformerConfig(
                n_layers=1,
                d_model=16,
                n_ctx=8,
                d_head=4,
                n_heads=4,
                d_vocab=20,
                d_mlp=32,
                act_fn="silu",
                positional_embedding_type="alibi",
                normalization_type="RMS",
            )
        )
    else:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
        from transformer_lens.model_bridge.sources.native import NativeModel

        cfg = TransformerBridgeConfig(
            n_layers=1,
            d_model=16,
            n_ctx=8,
            d_head=4,
            n_heads=4,
            d_vocab=20,
            d_mlp=32,
            act_fn="silu",
            gated_mlp=True,
            normalization_type="RMS",
        )
        tl = build_bridge_from_module(
            NativeModel(cfg), "TransformerLensNative", tl_config=cfg, model_name="g"
        )
    model = wrap(tl)
    assert model.backend == backend and fused_tail(model) is None
    assert fused_tail(build_model(TINY, backend=backend)) is not None


def test_hf_tokenizer_adapter_on_a_local_fast_tokenizer(tiny):
    # A real Hugging Face fast tokenizer built offline (no hub): the adapter wrap() uses for hub models.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mechheads.tokenizer import HFTokenizer

    vocab = {
        "<bos>": 0,
        "<pad>": 1,
        "<unk>": 2,
        **{w: i + 3 for i, w in enumerate("red fox blue cat".split())},
    }
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>"
    )
    tok = HFTokenizer(hf)
    assert (tok.bos_id, tok.pad_id, tok.vocab_size) == (0, 1, 7)
    assert tok.encode("red fox blue") == [3, 4, 5]  # no special tokens added by encode
    assert tok.id_to_str(6) == "cat" and tok.decode([3, 6]) == "red cat"
    model = wrap(tiny.tl, tokenizer=tok)
    assert model.to_tokens(["red fox", "cat blue"]).tolist() == [[0, 3, 4], [0, 6, 5]]  # BOS prepended
    assert model.to_str_tokens([0, 3, 6]) == ["<bos>", "red", "cat"]
    batch = Task("t", ["red fox", "cat"], [" blue", " red"]).batch(model)
    assert batch.tokens.tolist() == [[0, 3, 4, 5], [0, 6, 3, 1]]  # ragged prompts padded with pad_id
    assert batch.target_mask.sum().item() == 2
