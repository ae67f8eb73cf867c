"""Activation diagnostics from the literature (optional; nothing here runs unless asked for).

* :mod:`glubench.analysis.dead_units` — dead units, sparsity and gate saturation during
  training (a Lightning callback; Lu et al. 2019 on dying ReLU).
* :mod:`glubench.analysis.init_variance` — variance propagation at initialization (He et al. 2015).
* :mod:`glubench.analysis.regions` — exact linear-region counting along lines and in planes
  (Montúfar et al. 2014; Serra et al. 2018 for the upper bound).
* :mod:`glubench.analysis.cli` — the ``glubench-analyze`` command.
"""
