"""Evaluation protocols (SYSU-MM01, RegDB), metrics, re-ranking, extraction and reports.

Submodules: ``metrics`` (vectorised ranking metrics), ``sysu`` (gallery samplers and
protocol), ``regdb`` (both directions, trial check), ``rerank``, ``extract`` (needs torch),
``report`` (metrics.json, CSV, PNGs).
"""

# No re-exports: importing one module (e.g. the register stage's provenance check) must not
# load the whole package (dvc.yaml lists exactly the files a stage imports).
