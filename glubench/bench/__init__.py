"""The training-throughput benchmark behind ``glubench-bench``: glubench under Lightning, in a plain loop,
and Hugging Face peers, interleaved in one process (method and results: BENCHMARKS.md).

- :mod:`glubench.bench.config`: what to benchmark (:class:`~glubench.bench.config.BenchConfig`; no torch);
- :mod:`glubench.bench.models`: the models each contender trains, at the same shapes;
- :mod:`glubench.bench.engine`: the timed training loops and the interleaved run;
- :mod:`glubench.bench.results`: rates, medians, paired ratios and the markdown tables.

The command line is :mod:`glubench.cli.bench`; it imports only :mod:`~glubench.bench.config` until the
flags have been checked, so ``glubench-bench --help`` and a bad flag load no torch.
"""
