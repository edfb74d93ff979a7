"""Training: AGW optimiser/schedule, checkpoints, the per-epoch loop, Ray Train.

- :mod:`~vireid.training.schedule`: ``build_optimizer``, ``build_scheduler``, ``lr_factor``.
- :mod:`~vireid.training.checkpoint`: training state and model files, ``load_model``.
- :mod:`~vireid.training.loop`: ``Trainer`` and the per-epoch functions (no Ray needed).
- :mod:`~vireid.training.ray_train`: ``train_loop_per_worker``, ``build_trainer``, ``fit``
  (imported on demand: it imports Ray).
"""

# No re-exports: importing one module (e.g. the register stage's provenance check) must not
# load the whole package (dvc.yaml lists exactly the files a stage imports).
