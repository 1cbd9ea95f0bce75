"""One module per paper claim, table or figure, on one protocol (``protocol.py``).

    protocol.py         the protocol every experiment follows, its registry, and claims.json rows
    roles.py            structure: Hebbian (zero labels) vs BiGRU on grammars A, B, deep, UD EWT
    lm_ptb.py           content: SPEN with each context mechanism vs GPT on PTB; predictor ablation
    reproduce.py        ``emaprobe reproduce``: every experiment's claims in one report
    bench_scan.py       speed: the scan on CPU against scipy.signal.lfilter and a step loop
    bench_scan_cuda.py  speed: the Triton kernels on CUDA against the copy-bandwidth floor and peers
    demo.py             ``emaprobe demo``: a small version of each, on CPU

``emaprobe run NAME`` runs an experiment into ``runs/NAME/``; ``--out results/NAME`` writes the
committed results.
"""
