"""Deep, narrow ReLU networks: born-dead and collapse rates under several inits.

Entry point: ``python -m experiments.collapse --preset quick|collapse|collapse-lp``
(see README.md beside this file). Modules, one concept each: ``tasks`` (target
functions and their inputs), ``stacked`` (many networks as one batched model),
``inits`` (the inits, drawn per seed), ``measure`` (dead units, born dead,
collapse), ``train`` (batched full-batch Adam and the one-at-a-time loop),
``theory`` (Wilson intervals, the born-dead bound, safe depths), ``settings``,
``runner`` (resumable cells), ``summary``, ``plots``, ``report``.
"""
