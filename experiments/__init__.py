"""The comparison harness: does an initialization with fewer ReLU zeros train better?

Entry point: ``python -m experiments.compare --preset quick|seed|full``.
Modules, one concept each: ``settings`` (flags and presets), ``inits`` (named
initializations), ``data`` (the fixed splits), ``train`` (the training loop),
``stability`` (the activation-pattern stability measurement), ``measure``
(one run: init, measure, train), ``ledger`` (the record files of a results
folder), ``runner`` (resumable, parallel runs), ``stats``, ``plots``,
``report``, ``bench_training``.
"""
