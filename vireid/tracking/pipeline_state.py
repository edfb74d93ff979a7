"""The pipeline's state kept with its MLflow run: ``vireid publish`` and ``vireid restore``.

A cluster job runs ``dvc repro`` (and ``dvc push``) in a pod that dies afterwards, and with it
``dvc.lock``, the metrics and the registration decision. :func:`collect_state` checks that
``dvc.lock`` is the lock of the files in the folder, :func:`publish_state` logs them under
``pipeline/`` of the pipeline's MLflow run (``state.json`` lists each file and its md5, then the
run gets the tag ``pipeline_state: published``), and :func:`restore_state` writes them back
into a checkout, where ``dvc pull`` then fetches the cached outputs the lock names (model,
shards) from the DVC remote.

What is published: ``dvc.lock``, the parameters file, every metrics file ``dvc.yaml`` declares
that the lock records, and the register stage's ``registration.json``. "The lock of the current
outputs" means: each of those files (and the MLflow run record, which says which run they
belong to) has the md5 the lock records for it, in every stage of the state (the stages that
wrote them and the stages upstream of those), and the parameters those stages record have
the values of the parameters file. Hashes are DVC's own (``dvc_data``), YAML is read with
DVC's parser (``ruamel.yaml``, YAML 1.2), so a value means what it means to DVC.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vireid.io import atomic_write_bytes
from vireid.tracking.store import TrackingError, client
from vireid.tracking.tags import TAG_PIPELINE_LOCK_MD5, TAG_PIPELINE_STATE

STATE_PREFIX = "pipeline"  # artifact folder of the run
MANIFEST = "state.json"  # inside it: what was published
STATE_FORMAT = "vireid-pipeline-state/1"
PUBLISHED = "published"  # value of the TAG_PIPELINE_STATE tag
LOCK = "dvc.lock"
DVC_YAML = "dvc.yaml"
_VAR = re.compile(r"\$\{\s*([^}]+?)\s*\}")


@dataclass(frozen=True)
class PipelineState:
    """Files of a checked pipeline state: ``files`` maps each path relative to ``root``
    (POSIX form, as in ``dvc.lock``; ``lock`` is the lock's) to its md5; ``stages`` are the
    lock's stages it covers."""

    root: Path
    lock: str
    files: dict[str, str]
    stages: tuple[str, ...]


def _read_yaml(path: Path, what: str, hint: str = "run dvc repro in this folder first") -> Any:
    """``path`` parsed as DVC parses it (``ruamel.yaml`` safe loader); errors name the file."""
    from ruamel.yaml import YAML
    from ruamel.yaml import YAMLError as RuamelError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrackingError(f"{path}: missing: no {what} ({hint})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrackingError(f"{path}: unreadable {what} ({e})") from e
    try:
        return YAML(typ="safe", pure=True).load(text)
    except RuamelError as e:
        raise TrackingError(f"{path}: not valid YAML ({type(e).__name__})") from e


def file_md5(path: str | os.PathLike[str], hash_name: str = "md5") -> str:
    """The md5 DVC records for a file: ``md5`` (DVC 3: the bytes) or ``md5-dos2unix`` (the
    entries of DVC 2 locks, which have no ``hash`` field: CRLF read as LF in text files)."""
    from dvc_data.hashfile.hash import file_md5 as dvc_file_md5

    return str(dvc_file_md5(str(path), name=hash_name))


def _rel(root: Path, path: str | os.PathLike[str], what: str) -> str:
    """``path`` (absolute, or relative to ``root``) relative to ``root``, in POSIX form."""
    full = (root / path).absolute()
    try:
        return full.relative_to(root.absolute()).as_posix()
    except ValueError:
        raise TrackingError(f"{path}: the {what} is outside the DVC project {root} "
                            "(run in the folder that holds dvc.yaml)") from None


def _lookup(tree: Any, dotted: str) -> tuple[bool, Any]:
    """``tree["a"]["b"]`` for ``"a.b"``; ``(False, None)`` when a key is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _interpolate(text: str, params: Mapping[str, Any], where: str) -> str:
    """``${data.root}`` in a ``dvc.yaml`` path, from the parameters file (DVC's default vars)."""
    def value(m: re.Match[str]) -> str:
        found, v = _lookup(params, m.group(1))
        if not found or isinstance(v, (Mapping, list)):
            raise TrackingError(f"{where}: ${{{m.group(1)}}} is not a value of the parameters file "
                                "(publish reads the paths of dvc.yaml as DVC does)")
        return str(v)

    return _VAR.sub(value, text)


def _entry_paths(entries: Any) -> list[str]:
    """The paths of a ``dvc.yaml`` list of outputs (``- path`` or ``- path: {options}``)."""
    out = []
    for item in entries or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping):
            out.extend(str(k) for k in item)
    return out


def declared_metrics(dvc_yaml: str | os.PathLike[str], params: Mapping[str, Any]) -> list[str]:
    """The metrics files ``dvc_yaml`` declares (its stages' ``metrics`` and the top-level
    ``metrics`` list), ``${...}`` filled in from ``params``; POSIX paths relative to its folder."""
    path = Path(dvc_yaml)
    doc = _read_yaml(path, "dvc.yaml", "run in the folder that holds dvc.yaml")
    if not isinstance(doc, Mapping):
        raise TrackingError(f"{path}: not a dvc.yaml (its top level is not a mapping)")
    found = _entry_paths(doc.get("metrics"))
    for stage in (doc.get("stages") or {}).values():
        if isinstance(stage, Mapping):
            found.extend(_entry_paths(stage.get("metrics")))
    out: list[str] = []
    for p in found:
        norm = PurePosixPath(_interpolate(p, params, str(path))).as_posix()
        if norm not in out:
            out.append(norm)
    return out


def _lock_stages(lock: Any, path: Path) -> dict[str, Mapping[str, Any]]:
    stages = lock.get("stages") if isinstance(lock, Mapping) else None
    if not isinstance(stages, Mapping) or not all(isinstance(s, Mapping) for s in stages.values()):
        raise TrackingError(f"{path}: not a DVC lock file (no stages mapping)")
    return dict(stages)


def _entries(stage: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    return [e for e in stage.get(kind) or [] if isinstance(e, Mapping) and "path" in e]


def _norm(path: Any) -> str:
    return PurePosixPath(str(path)).as_posix()


def _overlaps(a: str, b: str) -> bool:
    """Same path, or one a folder holding the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def state_stages(stages: Mapping[str, Mapping[str, Any]], files: Iterable[str]) -> list[str]:
    """The stages of the lock that output one of ``files``, and every stage upstream of them
    (whose outputs they depend on), in the lock's order."""
    outs = {name: [_norm(e["path"]) for e in _entries(s, "outs")] for name, s in stages.items()}
    todo = [name for name, paths in outs.items() if set(paths) & set(files)]
    chosen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        chosen.add(name)
        for dep in (_norm(e["path"]) for e in _entries(stages[name], "deps")):
            todo.extend(other for other, paths in outs.items()
                        if other not in chosen and any(_overlaps(dep, o) for o in paths))
    return [name for name in stages if name in chosen]


def collect_state(root: str | os.PathLike[str], *, params: str | os.PathLike[str],
                  run_file: str | os.PathLike[str], registration: str | os.PathLike[str]) -> PipelineState:
    """The pipeline state of the DVC project at ``root`` (the folder of ``dvc.yaml`` and
    ``dvc.lock``), checked against its ``dvc.lock``; the paths given are absolute or relative
    to ``root``.

    Published: the lock, ``params`` (the parameters file), the metrics files ``dvc.yaml``
    declares that the lock records, and ``registration`` (the register stage's output, which
    the lock must record). ``run_file`` (the MLflow run record of the train stage) must be
    recorded by the lock too: it names the run the state belongs to. :class:`TrackingError`
    naming the file at fault when the lock is missing or is not the lock of these files (an
    md5 or a recorded parameter differs) or when a file it records is missing.
    """
    root = Path(root)
    lock_path, yaml_path = root / LOCK, root / DVC_YAML
    params_rel = _rel(root, params, "parameters file")
    params_path = root / params_rel
    params_data = _read_yaml(params_path, "parameters file", "give --params the file dvc repro read")
    if not isinstance(params_data, Mapping):
        raise TrackingError(f"{params_path}: not a parameters file (its top level is not a mapping)")
    stages = _lock_stages(_read_yaml(lock_path, "DVC lock"), lock_path)
    recorded_outs = {_norm(e["path"]) for s in stages.values() for e in _entries(s, "outs")}
    registration_rel = _rel(root, registration, "registration record")
    run_rel = _rel(root, run_file, "MLflow run record")
    if registration_rel not in recorded_outs:
        raise TrackingError(f"{lock_path}: records no output {registration_rel} (no register stage "
                            "ran: run dvc repro register, then publish)")
    metrics = [m for m in declared_metrics(yaml_path, params_data) if m in recorded_outs]
    published = [*metrics, registration_rel]
    chosen = state_stages(stages, published)
    checked = [run_rel, *published]
    for rel in checked:
        entries = [(name, e) for name in chosen for kind in ("outs", "deps")
                   for e in _entries(stages[name], kind) if _norm(e["path"]) == rel]
        if not entries:
            raise TrackingError(f"{lock_path}: the stages {', '.join(chosen)} record no {rel} "
                                "(so it cannot tell which MLflow run the state belongs to)")
        path = root / rel
        if not path.is_file():
            raise TrackingError(f"{path}: missing, but {lock_path} records it (stage "
                                f"{entries[0][0]}; dvc checkout or dvc repro first)")
        for name, entry in entries:
            hash_name = "md5" if entry.get("hash") == "md5" else "md5-dos2unix"
            actual = file_md5(path, hash_name)
            if str(entry.get("md5")) != actual:
                raise TrackingError(
                    f"{path}: md5 {actual} but {lock_path} records {entry.get('md5')} (stage {name}): "
                    "the lock is not the lock of the current outputs (rerun dvc repro, then publish)")
    for name in chosen:
        recorded = (stages[name].get("params") or {}).get(params_rel) or {}
        for key, value in recorded.items():
            found, current = _lookup(params_data, str(key))
            if not found or current != value:
                now = f"is {current!r}" if found else "is missing"
                raise TrackingError(
                    f"{params_path}: {key} {now} but {lock_path} records {value!r} for stage {name} "
                    "(parameters changed since dvc repro: rerun it, then publish)")
    files = {rel: file_md5(root / rel) for rel in (LOCK, params_rel, *published)}
    return PipelineState(root=root, lock=LOCK, files=files, stages=tuple(chosen))


def publish_state(tracking_uri: str, run_id: str, state: PipelineState, *, git_commit: str = "") -> dict[str, Any]:
    """Log ``state``'s files under ``pipeline/`` of run ``run_id`` (their paths kept), with
    ``pipeline/state.json`` listing them, then tag the run ``pipeline_state: published``.
    The files are copied first and logged from the copies only when they still have the md5
    :func:`collect_state` checked. Returns the manifest."""
    from vireid.tracking.runs import get_run, set_tags

    get_run(tracking_uri, run_id)
    manifest = {"format": STATE_FORMAT, "run_id": run_id, "git_commit": git_commit,
                "stages": list(state.stages), "lock": state.lock, "files": dict(state.files)}
    with tempfile.TemporaryDirectory(prefix="vireid-publish-") as tmp:
        staging = Path(tmp) / STATE_PREFIX
        for rel, md5 in state.files.items():
            copy = staging / rel
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.root / rel, copy)
            if file_md5(copy) != md5:
                raise TrackingError(f"{state.root / rel}: changed while being published "
                                    "(rerun vireid publish once nothing writes it)")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
        client(tracking_uri).log_artifacts(run_id, str(staging), STATE_PREFIX)
    set_tags(tracking_uri, run_id, {TAG_PIPELINE_STATE: PUBLISHED,
                                    TAG_PIPELINE_LOCK_MD5: state.files[state.lock]})
    return manifest


def _safe_rel(rel: Any, where: str) -> str:
    """A relative POSIX path without ``..``: what a manifest may name (nothing outside DIR)."""
    p = PurePosixPath(str(rel)) if isinstance(rel, str) else None
    if p is None or not str(rel) or p.is_absolute() or ".." in p.parts or p.as_posix() != str(rel) \
            or str(rel) == MANIFEST:
        raise TrackingError(f"{where}: names {rel!r}, not a relative path inside the project "
                            "(nothing restored)")
    return str(rel)


def _committed(repo: Path, rel: str) -> bool:
    """Whether ``rel`` is tracked by the git checkout at ``repo`` and unchanged since ``HEAD``
    (so git still has what an overwrite replaces)."""
    def git(*args: str) -> int:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=60).returncode

    try:
        return git("ls-files", "--error-unmatch", "--", rel) == 0 and \
            git("diff", "--quiet", "HEAD", "--", rel) == 0
    except (OSError, subprocess.SubprocessError):
        return False


def fetch_state(tracking_uri: str, run_id: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(manifest, {path: content})`` of the state published to run ``run_id``, every file
    checked against the manifest's md5. :class:`TrackingError` for an unknown run, a run
    with no published state, or a state that does not match its manifest."""
    from vireid.tracking.runs import get_run

    run = get_run(tracking_uri, run_id)
    if run.data.tags.get(TAG_PIPELINE_STATE) != PUBLISHED:
        raise TrackingError(f"MLflow run {run_id} in {tracking_uri}: no published pipeline state "
                            "(run vireid publish where dvc repro ran)")
    where = f"runs:/{run_id}/{STATE_PREFIX}/{MANIFEST}"
    with tempfile.TemporaryDirectory(prefix="vireid-restore-") as tmp:
        local = Path(client(tracking_uri).download_artifacts(run_id, STATE_PREFIX, tmp))
        try:
            manifest = json.loads((local / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TrackingError(f"{where}: missing or unreadable ({e}); rerun vireid publish") from e
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if manifest.get("format") != STATE_FORMAT or not isinstance(files, dict) or not files:
            raise TrackingError(f"{where}: not a {STATE_FORMAT} manifest with files (rerun vireid publish)")
        content: dict[str, bytes] = {}
        for rel, md5 in files.items():
            rel = _safe_rel(rel, where)
            try:
                data = (local / rel).read_bytes()
            except OSError:
                raise TrackingError(f"{where}: lists {rel}, which the run does not hold "
                                    "(an interrupted publish: rerun vireid publish)") from None
            if hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
                raise TrackingError(f"runs:/{run_id}/{STATE_PREFIX}/{rel}: md5 differs from {where} "
                                    "(an interrupted publish: rerun vireid publish)")
            content[rel] = data
    return manifest, content


def restore_state(tracking_uri: str, run_id: str, dest: str | os.PathLike[str], *,
                  force: bool = False) -> tuple[dict[str, Any], list[Path]]:
    """Write the state published to run ``run_id`` into ``dest`` (each file atomically, at its
    path in the project); returns ``(manifest, files written)``.

    An existing file with other content is overwritten only when git has it (tracked and
    unchanged since ``HEAD``) or with ``force``; otherwise nothing at all is written and the
    :class:`TrackingError` names the file.
    """
    manifest, content = fetch_state(tracking_uri, run_id)
    dest = Path(dest)
    targets = {rel: dest / rel for rel in content}
    for rel, path in targets.items():
        if path.is_dir() and not path.is_symlink():
            raise TrackingError(f"{path}: is a folder; restore writes a file there (move it aside)")
        if not force and path.exists() and path.read_bytes() != content[rel] and not _committed(dest, rel):
            raise TrackingError(f"{path}: has local changes that restore would overwrite (nothing "
                                "restored; commit or move them, or pass --force)")
    return manifest, [atomic_write_bytes(path, content[rel]) for rel, path in targets.items()]
