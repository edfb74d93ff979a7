"""DVC stage ``synth``: generate the synthetic dataset tree at ``data.root``.

Does nothing when ``data.synthetic`` is false (a real dataset lives at ``data.root``).
The tree is built under a temporary name and renamed into place (atomic).
"""

from __future__ import annotations

import logging

from vireid.data.synthetic import generate_regdb, generate_sysu
from vireid.stages.entry import (
    clean_stale_temporaries,
    load_config,
    setup_logging,
    stage_parser,
)

log = logging.getLogger("vireid.stages.synth")


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    args = parser.parse_args(argv)
    setup_logging()
    data = load_config(args.params).data
    if not data.synthetic:
        log.info("data.synthetic is false: using the dataset at %s, nothing to generate", data.root)
        return
    clean_stale_temporaries(data.root)
    if data.dataset == "sysu":
        generate_sysu(data.root, data.synth)
    else:
        generate_regdb(data.root, data.synth)

