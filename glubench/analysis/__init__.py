"""Activation diagnostics from the literature (optional; nothing here runs unless asked for).

Torch and numpy only, no training framework (the callback that runs the dead-unit probe during
training is :class:`glubench.train.monitors.DeadUnitsCallback`).

* :mod:`glubench.analysis.dead_units` — dead units, sparsity and gate saturation of the FFN hidden
  layer on a probe batch (Lu et al. 2019 on dying ReLU).
* :mod:`glubench.analysis.init_variance` — variance propagation at initialization (He et al. 2015).
* :mod:`glubench.analysis.regions` — exact linear-region counting along lines and in planes
  (Montúfar et al. 2014; Serra et al. 2018 for the upper bound).
* :mod:`glubench.analysis.ffn_regions` — those counts on a transformer's FFNs.
* :mod:`glubench.analysis.hooks` — :func:`~glubench.analysis.hooks.run_with_hooks`, the one way
  the diagnostics capture activations.

The ``glubench-analyze`` command is :mod:`glubench.cli.analyze`.
"""
