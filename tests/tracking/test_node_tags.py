"""The node-id tags of a run (vireid.tracking.store.append_tag): one entry per node change."""

from __future__ import annotations

from vireid.tracking.store import append_tag, client, ensure_experiment
from vireid.tracking.tags import TAG_RAY_NODES


def test_append_tag_records_each_node_change_once(target) -> None:
    exp = ensure_experiment(target.tracking_uri, target.experiment, target.artifact_location)
    c = client(target.tracking_uri)
    run_id = c.create_run(exp).info.run_id
    assert append_tag(target.tracking_uri, run_id, TAG_RAY_NODES, "a") == "a"
    assert append_tag(target.tracking_uri, run_id, TAG_RAY_NODES, "a") == "a"  # a restart on the same node
    assert append_tag(target.tracking_uri, run_id, TAG_RAY_NODES, "b") == "a,b"
    assert append_tag(target.tracking_uri, run_id, TAG_RAY_NODES, "a") == "a,b,a"
    assert c.get_run(run_id).data.tags[TAG_RAY_NODES] == "a,b,a"
