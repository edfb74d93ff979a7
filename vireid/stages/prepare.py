"""DVC stage ``prepare``: raw tree at ``data.root`` -> Arrow shards + manifest.json."""

from __future__ import annotations

from vireid.data.prepare import prepare
from vireid.stages.entry import (
    clean_stale_temporaries,
    load_config,
    setup_logging,
    stage_parser,
)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="data/shards", help="shard directory (default data/shards)")
    args = parser.parse_args(argv)
    setup_logging()
    data = load_config(args.params).data
    clean_stale_temporaries(args.out)
    prepare(data, args.out)

