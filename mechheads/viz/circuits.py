"""CircuitsVis attention patterns, with the JavaScript inlined so they render offline.

CircuitsVis (Cooney & Nanda, https://github.com/TransformerLensOrg/CircuitsVis) renders React
widgets from a bundled JavaScript file. Its ``RenderedHTML`` object carries two versions: one
with the bundle inlined (``local_src``) and one importing it from a CDN (``cdn_src``); its own
``_repr_html_`` probes the internet to choose between them and ``str()`` gives the CDN one. This
module only ever uses the inlined version, so widgets work in offline Jupyter sessions and in
saved, self-contained HTML pages.

Patterns come through the :class:`~mechheads.model.HeadModel` protocol (``run_with_cache`` on
``blocks.{l}.attn.hook_pattern``) and token strings through ``model.to_str_tokens``: any backend.

Example:
    >>> from mechheads import zoo
    >>> from mechheads.viz import attention_patterns
    >>> model = zoo.load("induction-2l")
    >>> view = attention_patterns(model, "red fox blue cat red fox blue cat", ["L0H0", "L1H0"])
    >>> "CircuitsVis.render" in view.html
    True
"""

from __future__ import annotations

import functools
import html as html_lib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int

from mechheads.errors import MechheadsError
from mechheads.heads import Head, HeadsLike, all_heads, parse_heads
from mechheads.model import HeadModel, hook_pattern

Kind = Literal["heads", "pattern"]
_ELEMENTS = {"heads": "AttentionHeads", "pattern": "AttentionPattern"}
_RENDER_CALL = "CircuitsVis.render("
_SELF_CLOSING_DIV = re.compile(r'(<div id="circuits-vis-[^"]*"[^>]*?)\s*/>')


@functools.cache
def _bundle() -> str:
    """The CircuitsVis browser bundle exactly as CircuitsVis inlines it (closing script tags removed)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise MechheadsError(
            f"the installed circuitsvis has no JavaScript bundle at {path}; reinstall circuitsvis"
        )
    return path.read_text(encoding="utf-8").replace("</script>", "")


def circuitsvis_script() -> str:
    """A classic ``<script>`` defining the global ``CircuitsVis`` once per page.

    For pages with many widgets: put this once near the top, then render each widget with
    ``inline_js=False`` so the 1.3 MB bundle is not repeated. Module scripts run after classic
    ones, so the widgets find ``CircuitsVis`` wherever this sits in the page.
    """
    return f"<script>{_bundle()}</script>"


def _escape_props(js: str) -> str:
    """Make the props JSON safe inside a <script> element: '<' only occurs inside JSON strings,
    where ``\\u003c`` reads back as the same character, so '</script>' or '<!--' in a token
    cannot end or comment out the script."""
    return js.replace("<", "\\u003c")


def _local_html(rendered, inline_js: bool) -> str:
    """CircuitsVis ``local_src`` (the bundle inlined), with the props escaped for HTML; without the
    bundle when ``inline_js`` is False."""
    src = rendered.local_src
    bundle = _bundle()
    start = src.find(bundle)
    if start < 0:
        raise MechheadsError(
            "circuitsvis did not inline its JavaScript bundle as expected (circuitsvis version changed?)"
        )
    head, tail = src[:start], src[start + len(bundle) :]
    call = tail.rfind(_RENDER_CALL)
    end = tail.rfind("</script>")
    if call < 0 or end < call:
        raise MechheadsError("unexpected CircuitsVis HTML: no CircuitsVis.render(...) call")
    tail = tail[:call] + _escape_props(tail[call:end]) + tail[end:]
    # CircuitsVis writes its mount point as '<div .../>', which HTML parses as an open <div>: the
    # rest of the page (the next widget included) would nest inside it and be wiped when React
    # mounts. Close it explicitly.
    head, n = _SELF_CLOSING_DIV.subn(r"\1></div>", head, count=1)
    if n != 1:
        raise MechheadsError('unexpected CircuitsVis HTML: no <div id="circuits-vis-..."/> mount point')
    return head + (bundle if inline_js else "") + tail


class AttentionView:
    """A CircuitsVis attention widget as self-contained HTML (JavaScript inlined, no CDN).

    Displays itself in Jupyter (``_repr_html_``); ``.html`` and ``str(view)`` give the same HTML.

    Attributes:
        html: The widget's HTML (a ``<div>`` and a ``<script type="module">``).
        tokens: The token strings shown.
        heads: The heads shown, in order.
        patterns: Their attention patterns, [head, query, key].
        kind: ``"heads"`` (one thumbnail per head, click to enlarge) or ``"pattern"`` (one head).
    """

    def __init__(
        self,
        html: str,
        tokens: list[str],
        heads: list[Head],
        patterns: Float[torch.Tensor, "head query key"],
        kind: str,
    ):
        self.html = html
        self.tokens = tokens
        self.heads = heads
        self.patterns = patterns
        self.kind = kind

    def _repr_html_(self) -> str:
        return self.html

    def __html__(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html

    def __repr__(self) -> str:
        names = ", ".join(str(h) for h in self.heads)
        return f"AttentionView(kind={self.kind!r}, heads=[{names}], tokens={len(self.tokens)})"


def _prompt_tokens(model: HeadModel, prompt, max_tokens: int | None) -> Int[torch.Tensor, " pos"]:
    if isinstance(prompt, str):
        tokens = model.to_tokens(prompt)[0]
    elif isinstance(prompt, torch.Tensor):
        tokens = prompt
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1:
            raise MechheadsError(
                f"prompt must be a string or one sequence of token ids [pos], got a tensor of shape {tuple(prompt.shape)}"
            )
        if tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise MechheadsError(f"prompt token ids must be integers, got dtype {tokens.dtype}")
    else:
        raise MechheadsError(f"prompt must be a string or a 1-D token tensor, got {type(prompt).__name__}")
    if tokens.numel() == 0:
        raise MechheadsError("prompt has no tokens")
    if max_tokens is not None:
        if max_tokens < 1:
            raise MechheadsError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        tokens = tokens[:max_tokens]
    return tokens.long()


def _patterns(
    model: HeadModel, tokens: Int[torch.Tensor, " pos"], heads: list[Head]
) -> Float[torch.Tensor, "head query key"]:
    layers = sorted({h.layer for h in heads})
    names = [hook_pattern(layer) for layer in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names)
    return torch.stack([cache[hook_pattern(h.layer)][0, h.head] for h in heads]).float().cpu()


def _token_strings(model: HeadModel, tokens: torch.Tensor) -> list[str]:
    try:
        return model.to_str_tokens(tokens.tolist())
    except MechheadsError:  # no tokenizer: show the ids
        return [str(int(t)) for t in tokens]


def attention_patterns(
    model: HeadModel,
    prompt: str | torch.Tensor,
    heads: HeadsLike | None = None,
    *,
    kind: Kind = "heads",
    max_tokens: int | None = 64,
    inline_js: bool = True,
    title: str | None = None,
) -> AttentionView:
    """Attention patterns of chosen heads on one prompt, as an offline CircuitsVis widget.

    Args:
        model: Any mechheads model with a tokenizer (without one, pass token ids; they are shown as numbers).
        prompt: Text (tokenised with ``model.to_tokens``, BOS prepended) or one sequence of token
            ids ([pos] or [1, pos]).
        heads: Heads to show (``"L1H0"``, ``(1, 0)``, lists, a [layer, head] mask); ``None`` = all.
        kind: ``"heads"``: CircuitsVis ``AttentionHeads`` (thumbnails of every head, one enlarged);
            ``"pattern"``: ``AttentionPattern``, a single head's full pattern (exactly one head).
        max_tokens: Keep only the first ``max_tokens`` tokens (the patterns of a causal model on a
            prefix equal the prefix of its patterns); ``None`` keeps all.
        inline_js: Inline the CircuitsVis bundle (default). ``False`` leaves it out, for pages that
            include :func:`circuitsvis_script` once.
        title: An optional heading shown above the widget.

    Returns:
        An :class:`AttentionView`: one widget, displayed by Jupyter; ``.html`` is the string.

    Example:
        >>> view = attention_patterns(model, "red fox blue cat red fox blue cat", "L1H0", kind="pattern")
        >>> view.tokens[:3]     # doctest: +SKIP
        ['<bos>', 'red', 'fox']
    """
    if kind not in _ELEMENTS:
        raise MechheadsError(f"kind must be one of {list(_ELEMENTS)}, got {kind!r}")
    hs = all_heads(model) if heads is None else parse_heads(heads, model)
    if kind == "pattern" and len(hs) != 1:
        raise MechheadsError(
            f"kind='pattern' shows exactly one head, got {len(hs)} ({', '.join(map(str, hs[:6]))}"
            f"{', …' if len(hs) > 6 else ''}); pass one head or use kind='heads'"
        )
    tokens = _prompt_tokens(model, prompt, max_tokens)
    patterns = _patterns(model, tokens, hs)
    strs = _token_strings(model, tokens)
    causal = model.cfg.attention_dir == "causal"
    shown = (torch.round(patterns.double() * 1e4) / 1e4).tolist()  # 4 decimals: a third of the JSON

    from circuitsvis.attention import attention_heads, attention_pattern

    if kind == "heads":
        rendered = attention_heads(
            attention=shown,
            tokens=strs,
            attention_head_names=[str(h) for h in hs],
            mask_upper_tri=causal,
        )
    else:
        rendered = attention_pattern(tokens=strs, attention=shown[0], mask_upper_tri=causal)
    out = _local_html(rendered, inline_js)
    if title:
        out = f"<h4>{html_lib.escape(title)}</h4>\n{out}"
    return AttentionView(out, strs, hs, patterns, kind)


def attention_html(
    model: HeadModel,
    prompt: str | torch.Tensor,
    heads: HeadsLike | None = None,
    **kwargs,
) -> str:
    """:func:`attention_patterns` as a plain HTML string (for reports); same arguments."""
    return attention_patterns(model, prompt, heads, **kwargs).html


__all__: Sequence[str] = ["AttentionView", "attention_html", "attention_patterns", "circuitsvis_script"]
