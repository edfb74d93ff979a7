"""bench/run_all.py (``make bench``) knows the documented benchmarks; checked without running any."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests._bench import load_bench

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "bench" / "run_all.py"
DOCS = (REPO / "docs" / "benchmarks.md", REPO / "docs" / "method.md")


run_all = load_bench("run_all")


def documented_commands() -> list[tuple[dict[str, str], list[str]]]:
    """(environment, [script, args...]) of every backticked `... python bench/x.py ...` command."""
    commands = []
    for doc in DOCS:
        for snippet in re.findall(r"`([^`]+)`", doc.read_text()):
            if "bench/" not in snippet:
                continue  # prose in backticks (it may hold an apostrophe), not a command
            tokens = shlex.split(snippet)
            scripts = [i for i, t in enumerate(tokens) if re.fullmatch(r"bench/\w+\.py", t)]
            if not scripts or not any(re.fullmatch(r"python3?", t) for t in tokens[:scripts[0]]):
                continue  # a mention of a script, not a command
            env = dict(t.split("=", 1) for t in tokens[:scripts[0]] if re.fullmatch(r"[A-Z_]+=.*", t))
            commands.append((env, tokens[scripts[0]:]))
    return commands


def without_json(argv: list[str] | tuple[str, ...]) -> tuple[list[str], str | None]:
    args, json_path = list(argv), None
    if "--json" in args:
        i = args.index("--json")
        json_path = args[i + 1]
        del args[i:i + 2]
    return args, json_path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUNNER), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_every_script_exists() -> None:
    assert run_all.BENCHMARKS
    for bench in run_all.BENCHMARKS:
        assert (REPO / bench.script).is_file(), bench


def test_names_are_unique() -> None:
    assert len(set(run_all.NAMES)) == len(run_all.NAMES)


def test_docs_and_runner_agree() -> None:
    """Every documented command is a runner entry (arguments equal up to the JSON file name) and
    every runner entry is documented; a runner JSON file is one the docs name for that script."""
    docs = documented_commands()
    assert len(docs) >= 7, docs  # eval, prepare, GPU step, loader x2, CPU step, Ray, ablation
    entries = {b.name: (without_json(b.argv)[0], b) for b in run_all.BENCHMARKS}
    for env, argv in docs:
        args, _ = without_json(argv)
        matches = [b for a, b in entries.values() if a == args]
        assert matches, f"documented command not in bench/run_all.py: {shlex.join(argv)}"
        for key, value in env.items():
            assert all(b.env.get(key) == value for b in matches), (key, matches)
    for args, bench in entries.values():
        documented = [without_json(argv)[1] for _, argv in docs if without_json(argv)[0] == args]
        assert documented, f"runner entry {bench.name} is not documented: {shlex.join(bench.argv)}"
        named = {j for j in documented if j is not None}
        json_path = without_json(bench.argv)[1]
        if named:
            assert json_path in named, (bench.name, json_path, named)
        if json_path is not None:
            assert json_path.startswith("bench/results/"), json_path


def test_list_prints_every_benchmark() -> None:
    proc = run("--list")
    assert proc.returncode == 0, proc.stderr
    for bench in run_all.BENCHMARKS:
        assert bench.name in proc.stdout
        assert shlex.join(bench.argv) in proc.stdout


def test_unknown_name_is_refused_with_the_known_ones() -> None:
    proc = run("--only", "nosuch")
    assert proc.returncode != 0
    assert "nosuch" in proc.stderr
    for name in run_all.NAMES:
        assert name in proc.stderr


def test_ablation_needs_its_flag() -> None:
    proc = run("--only", "ablation")
    assert proc.returncode != 0
    assert "--with-ablation" in proc.stderr


def test_gpu_benchmark_skipped_without_cuda(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(run_all, "cuda_available", lambda: False)
    monkeypatch.setattr(run_all, "run_one", lambda bench: pytest.fail(f"ran {bench.name}"))
    gpu = [b.name for b in run_all.BENCHMARKS if b.needs_gpu]
    assert gpu
    assert run_all.main(["--only", *gpu]) == 0
    assert "skipped: needs a GPU" in capsys.readouterr().out


def test_failure_is_reported_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    benches = (run_all.Benchmark("fails", ("-c", "import sys; sys.exit(3)")),
               run_all.Benchmark("passes", ("-c", "pass")))
    monkeypatch.setattr(run_all, "BENCHMARKS", benches)
    assert run_all.main([]) == 1
    out = capsys.readouterr().out
    assert "fails: FAILED (exit 3)" in out
    assert "passes: ok" in out
    summary = out[out.rindex("benchmark"):]
    assert re.search(r"fails\s+[\d.]+\s+FAILED \(exit 3\)", summary)
    assert re.search(r"passes\s+[\d.]+\s+ok", summary)
