"""Triton kernels for the scans, forward and backward, near the memory-bandwidth floor.

    ema.py           ``ema_traces``: kernels, launchers (``ema_traces_fwd``/``_bwd``), autograd
                     (``fused_ema_traces``)
    linear_scan.py   ``linear_scan`` and ``gated_scan``: kernels, launchers (``linear_scan_fwd``/``_bwd``,
                     ``gated_scan_fwd``/``_bwd``), autograd (``fused_linear_scan``, ``fused_gated_scan``)
    cross_entropy.py the fused token cross-entropy (``ops/losses.py``): two passes over the logits in their dtype
    topk.py          ``topk_mask_triton``: the k largest of each row kept in one pass (the mask form of
                     ``ops/sparse_ffn.py``'s top-k FFN); ``topk_mask_bits`` and ``unmask_triton``, the
                     code's nonzero units as bits and the backward that reads them
    plan.py          tile shapes, time segments and warm-ups; pure Python, the SM count an argument
    cache.py         the launchers' plans and coefficient tensors, made once per key (shape, alphas,
                     device...), so that an eager call allocates its outputs and launches
    common.py        what the kernels share: the scan's pair operator, tile and mask helpers, ``sm_count``
    opaque.py        the launchers as ``torch.library`` custom ops, which a ``torch.compile``d model calls

``ema.py``, ``linear_scan.py``, ``topk.py`` and ``common.py`` need Triton; ``plan.py``, ``cache.py`` and
``opaque.py`` do not, so this package imports nothing itself. ``ops/scan.py`` loads the three ops as its
"triton" backend the first time a CUDA tensor asks for it. The decision record behind every default (what
was measured, kept and dropped) is ``notes/kernels.md``.
"""
