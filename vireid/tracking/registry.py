"""Register a model: a new version, and alias ``champion`` only for a better one on the same data.

Every registered model becomes a new version; alias ``champion`` moves only to a better model
on the same protocol and the same data.

**Protocol** (:func:`protocol_key`): the evaluation entry of the headline metric plus what
else changes its numbers: ``sysu/all/single@community`` (dataset/mode/shot @ gallery
sampler), ``regdb/v2t@trial1`` (direction @ RegDB trial), with ``+rerank`` appended when
k-reciprocal re-ranking was on.

**Promotion rule** (:func:`decide`), in order:

1. no champion yet -> the new version becomes champion;
2. the champion has no recorded protocol/headline, or another protocol, or another headline
   metric, or was evaluated on other data (another ``data_hash``: the evaluated shards'
   ``sha256_total``, which also tells synthetic from real data and one RegDB trial from
   another) -> not comparable: the new version is registered without promotion (challenger)
   and the champion stays (keep one registered model name per dataset and protocol,
   ``track.model_name``, to hold a champion for each);
3. a NaN headline never wins -> challenger;
4. headline strictly greater than the champion's -> champion (all ReID headline metrics,
   mAP/mINP/rank-k, are higher-is-better); otherwise (ties included) -> challenger.

The decision and its reason are stored as version tags (``decision``, ``reason``) and
returned as a dict that the register stage writes to ``registration.json``.

**Idempotence**: :func:`register` called with a ``fingerprint`` (tags ``model_sha256``,
``eval_sha256``: the model file and its evaluation) first looks for a version carrying it.
One with a decision is reused (same version, no new version), and its record reads the
aliases as they stand now (``alias``: the alias the version holds, None when it holds none;
``promoted``: whether it is the champion now; ``current_champion``: the version the champion
alias points to): another version may have become champion since; one
without (a registration killed between creating the version and recording the decision) is
completed. The register stage also skips logging the model again when the version exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vireid.tracking.store import client, use_tracking_uri
from vireid.tracking.tags import (
    TAG_DATA_HASH,
    TAG_DECISION,
    TAG_GIT_COMMIT,
    TAG_HEADLINE,
    TAG_PROTOCOL,
    TAG_REASON,
    TAG_RUN_ID,
    TAG_VALUE,
)


def protocol_key(headline: str, *, dataset: str, sysu_sampler: str = "community",
                 regdb_trial: int = 1, rerank: bool = False, flip: bool = True, trials: int = 10) -> str:
    """``"sysu/all/single/mAP"`` + sampler -> ``"sysu/all/single@community"``; RegDB uses the
    trial (``regdb/v2t@trial1``). The headline must belong to ``dataset``. Evaluation settings
    that change the numbers and differ from the defaults are appended: ``+rerank``,
    ``+noflip`` (``eval.flip`` off), ``+trials<n>`` (SYSU-MM01's ``eval.trials`` gallery draws
    other than 10; a RegDB evaluation runs the shards' one split trial whatever ``eval.trials``)."""
    if headline.count("/") < 1:
        raise ValueError(f"eval.headline: {headline!r} is not <protocol>/<metric>")
    entry = headline.rsplit("/", 1)[0]
    family = entry.split("/", 1)[0]
    if family != dataset:
        raise ValueError(f"eval.headline: {headline!r} is a {family} metric but data.dataset is {dataset!r}")
    suffix = sysu_sampler if dataset == "sysu" else f"trial{int(regdb_trial)}"
    settings = ("+rerank" if rerank else "") + ("" if flip else "+noflip")
    if dataset == "sysu" and int(trials) != 10:
        settings += f"+trials{int(trials)}"
    return f"{entry}@{suffix}{settings}"


@dataclass(frozen=True)
class Decision:
    """Which alias the new version gets and why."""

    alias_role: str  # "champion" or "challenger"
    reason: str


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def decide(*, protocol: str, headline: str, value: float,
           champion: Mapping[str, str] | None, champion_version: str | None,
           data_hash: str | None = None) -> Decision:
    """The promotion rule of the module docstring; ``champion``: the current champion's
    version tags (None when there is none); ``data_hash``: the evaluated data's hash (None:
    not compared, for callers without one)."""
    if champion is None:
        return Decision("champion", f"first champion: headline {headline} {_fmt(value)} on {protocol}")
    who = f"champion v{champion_version}"
    c_protocol, c_headline = champion.get(TAG_PROTOCOL), champion.get(TAG_HEADLINE)
    try:
        c_value = float(champion.get(TAG_VALUE, "nan"))
    except ValueError:
        c_value = math.nan
    if not c_protocol or not c_headline or math.isnan(c_value):
        return Decision("challenger", f"{who} has no recorded protocol/headline value: not "
                                      f"comparable with {headline} on {protocol}; champion kept")
    if c_protocol != protocol:
        return Decision("challenger", f"{who} was evaluated on another protocol ({c_protocol}, "
                                      f"this model: {protocol}): not comparable; champion kept")
    if c_headline != headline:
        return Decision("challenger", f"{who}'s headline is {c_headline}, this model's {headline}: "
                                      "not comparable; champion kept")
    c_hash = champion.get(TAG_DATA_HASH, "")
    if data_hash is not None and (not c_hash or c_hash != data_hash):
        return Decision("challenger", f"{who} was evaluated on other data (data hash "
                                      f"{c_hash[:12] or 'unknown'}, this model: {data_hash[:12] or 'unknown'}): "
                                      "not comparable; registered without promotion, champion kept "
                                      "(use another track.model_name for a champion on this data)")
    if math.isnan(value):
        return Decision("challenger", f"headline {headline} is NaN; {who} kept")
    if value > c_value:
        return Decision("champion", f"headline {headline} {_fmt(value)} > {who}'s {_fmt(c_value)}")
    return Decision("challenger", f"headline {headline} {_fmt(value)} <= {who}'s {_fmt(c_value)}")


def logged_model_id(model_uri: str) -> str | None:
    """The logged model's id in a ``models:/<model_id>`` URI (what ``log_embedder`` returns);
    None for any other URI (``models:/name/1``, ``models:/name@alias``, ``runs:/...``)."""
    prefix = "models:/"
    rest = model_uri[len(prefix):] if model_uri.startswith(prefix) else ""
    return rest if rest and not any(c in rest for c in "/@") else None


def find_version(tracking_uri: str, model_name: str, fingerprint: Mapping[str, str]):  # -> ModelVersion | None
    """The first version of ``model_name`` whose tags carry all of ``fingerprint`` (None when
    there is none, or no such registered model)."""
    from mlflow.exceptions import MlflowException

    quoted = model_name.replace("'", "\\'")
    try:
        versions = client(tracking_uri).search_model_versions(f"name='{quoted}'")
    except MlflowException:
        return None
    matches = [v for v in versions if v.name == model_name
               and all(v.tags.get(k) == str(val) for k, val in fingerprint.items())]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def register(
    tracking_uri: str,
    *,
    model_name: str,
    model_uri: str,
    run_id: str,
    protocol: str,
    headline: str,
    value: float,
    data_hash: str,
    git_commit: str,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    fingerprint: Mapping[str, str] | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Create a new version of ``model_name`` from ``model_uri`` (tagged with protocol,
    headline name and value, data hash, git commit, run id, ``fingerprint`` and
    ``extra_tags``), then move ``champion_alias`` to it or set ``challenger_alias`` per
    :func:`decide` (which compares data hashes too). With a ``fingerprint`` an existing
    version carrying it is reused (module docstring: idempotence). Returns the registration
    record (``reused``: whether the version existed)."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        c.create_registered_model(model_name, description="vireid: visible-infrared ReID embedder")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = find_version(tracking_uri, model_name, fingerprint) if fingerprint else None
    aliases = c.get_registered_model(model_name).aliases  # alias -> version
    champion_version = aliases.get(champion_alias)

    def record(version: str, role: str, reason: str, previous: dict[str, Any] | None, reused: bool,
               source: str) -> dict[str, Any]:
        return {
            "model_name": model_name, "version": str(version),
            "alias": champion_alias if role == "champion" else challenger_alias,
            "promoted": role == "champion", "reason": reason,
            "protocol": protocol, "headline": headline, "value": float(value),
            "previous_champion": previous, "model_uri": source,
            "registry_uri": f"models:/{model_name}/{version}", "run_id": run_id,
            "data_hash": data_hash, "git_commit": git_commit, "tracking_uri": tracking_uri,
            "reused": reused,
        }

    if existing is not None and existing.tags.get(TAG_DECISION) in ("champion", "challenger"):
        return _current(record(existing.version, existing.tags[TAG_DECISION],
                               existing.tags.get(TAG_REASON, ""), None, True, existing.source),
                        aliases, champion_alias, challenger_alias)

    if existing is not None and champion_version is not None and str(champion_version) == str(existing.version):
        # killed after the alias moved and before the decision was recorded
        decision, champion_tags = Decision("champion", f"alias {champion_alias} already points to "
                                                       f"v{existing.version} (completed an interrupted registration)"), None
    else:
        champion_tags = None
        if champion_version is not None:
            champion_tags = dict(c.get_model_version(model_name, str(champion_version)).tags)
        decision = decide(protocol=protocol, headline=headline, value=float(value), champion=champion_tags,
                          champion_version=None if champion_version is None else str(champion_version),
                          data_hash=data_hash)
    if existing is not None:
        mv = existing
    else:
        tags = {TAG_PROTOCOL: protocol, TAG_HEADLINE: headline, TAG_VALUE: repr(float(value)),
                TAG_DATA_HASH: data_hash, TAG_GIT_COMMIT: git_commit, TAG_RUN_ID: run_id,
                **{k: str(v) for k, v in (extra_tags or {}).items()},
                **{k: str(v) for k, v in (fingerprint or {}).items()}}
        with use_tracking_uri(tracking_uri):  # a models:/<id> source is resolved via the global URI
            # a tracking server refuses a models:/<id> source without its model_id (sqlite does not)
            mv = c.create_model_version(model_name, model_uri, run_id=run_id, tags=tags,
                                        model_id=logged_model_id(model_uri))
    alias = champion_alias if decision.alias_role == "champion" else challenger_alias
    c.set_registered_model_alias(model_name, alias, mv.version)
    c.set_model_version_tag(model_name, mv.version, TAG_REASON, decision.reason)
    c.set_model_version_tag(model_name, mv.version, TAG_DECISION, decision.alias_role)  # last: "done"
    previous = None
    if champion_tags is not None:
        previous = {"version": str(champion_version), "protocol": champion_tags.get(TAG_PROTOCOL),
                    "headline": champion_tags.get(TAG_HEADLINE), "value": champion_tags.get(TAG_VALUE),
                    "data_hash": champion_tags.get(TAG_DATA_HASH)}
    return record(mv.version, decision.alias_role, decision.reason, previous, existing is not None,
                  mv.source if existing is not None else model_uri) | {"current_champion": str(mv.version)
                  if decision.alias_role == "champion" else _opt(champion_version)}


def _opt(version: Any) -> str | None:
    return None if version is None else str(version)


def _current(rec: dict[str, Any], aliases: Mapping[str, Any], champion_alias: str,
             challenger_alias: str) -> dict[str, Any]:
    """The record of an already registered version as the registry stands now: its alias and
    ``promoted`` are read from the aliases (another version may have become champion since
    its registration), not from the decision stored when it was registered."""
    version = rec["version"]
    champion = _opt(aliases.get(champion_alias))
    if champion == version:
        alias = champion_alias
    elif _opt(aliases.get(challenger_alias)) == version:
        alias = challenger_alias
    else:
        alias = None
    reason = rec["reason"]
    if (alias == champion_alias) != rec["promoted"]:
        now = f"alias {champion_alias} now points to " + (f"v{champion}" if champion else "no version")
        reason = f"{now}; at its registration: {reason}"
    return rec | {"alias": alias, "promoted": alias == champion_alias, "reason": reason,
                  "current_champion": champion}
