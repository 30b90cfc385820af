"""The Ray executor on real Ray: a local instance the CLI starts itself, and a simulated two-node cluster.
Its outputs are byte for byte those of the local executor (compared by conversion.json's output hashes).
Skipped only when Ray (the `ray` extra) is not installed."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, run_cli

if importlib.util.find_spec("ray") is None:
    pytest.skip("the ray extra is not installed", allow_module_level=True)
# Ray is never imported into the test process: loaded first, its protobuf code breaks a later
# `import mindspore` in the same process (other test modules load MindSpore in-process). The CLI and
# the cluster below run in their own processes, as the driver does for users.

MODELS = [FIXTURES / "gqa-tied-bf16-sharded", FIXTURES / "mha-untied-fp32", FIXTURES / "qwen2-tied-bf16"]
RAY_TMP = Path("/tmp") / f"rb{os.getpid()}"  # short: Ray's Unix socket paths must stay within 107 bytes


def manifest(root: Path, extra: list[dict] = ()) -> Path:
    rows = [{"src": str(p), "out": f"out/{p.name}", **({"format": "safetensors"} if i == 1 else {})}
            for i, p in enumerate(MODELS)] + list(extra)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fresh(root: Path) -> Path:
    """The manifest in `root`, with nothing of an earlier run left. Every executor writes into the same
    paths: the run YAML names OUT_DIR's absolute path, so outputs can be byte-identical only there."""
    shutil.rmtree(root, ignore_errors=True)
    return manifest(root)


@pytest.fixture(scope="module")
def same_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("same") / "run"


def output_hashes(m: Path) -> dict[str, list]:
    """Each row's output files as conversion.json records them: name, size, sha256."""
    out = {}
    for p in MODELS:
        record = json.loads((m.parent / "out" / p.name / "conversion.json").read_text())
        out[p.name] = [(f["name"], f["size"], f["sha256"]) for f in record["outputs"]]
    return out


@pytest.fixture(scope="module")
def local_hashes(same_root):
    m = fresh(same_root)
    proc = run_cli("bulk", m, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    return output_hashes(m)


@pytest.fixture(scope="module")
def ray_tmp():
    RAY_TMP.mkdir(exist_ok=True)
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(RAY_TMP)  # inherited by the CLI subprocess and the simulated nodes
    yield RAY_TMP
    if before is None:
        os.environ.pop("RAY_TMPDIR")
    else:
        os.environ["RAY_TMPDIR"] = before
    shutil.rmtree(RAY_TMP, ignore_errors=True)


def test_the_cli_starts_a_local_ray_and_writes_what_the_local_executor_writes(same_root, local_hashes, ray_tmp):
    m = fresh(same_root)
    proc = run_cli("bulk", m, "--executor", "ray", "--jobs", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((same_root / "bulk-report.json").read_text())
    assert report["executor"] == "ray" and report["counts"]["converted"] == len(MODELS)
    assert output_hashes(m) == local_hashes
    assert "INFO" not in proc.stderr  # Ray's own start-up chatter stays out of the per-row lines


CLUSTER = """
import json, sys
import ray
from ray.cluster_utils import Cluster
import llama_convert
node = {"num_cpus": 1, "memory": 2**30, "object_store_memory": 80 * 2**20}
cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
cluster.add_node(**node)
ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
try:
    reports = [llama_convert.run_bulk(m, llama_convert.BulkOptions(executor="ray")) for m in sys.argv[1:]]
finally:
    ray.shutdown()
    cluster.shutdown()
print(json.dumps(reports))
"""


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, same_root, local_hashes, ray_tmp):
    """Reports of two manifests run on a simulated two-node cluster (1 CPU, 1 GiB each), in one process."""
    root = tmp_path_factory.mktemp("cluster")
    spread = fresh(same_root)
    too_big = manifest(root / "too-big", [{"src": str(FIXTURES / "gqa-llama3-rope"), "out": "out/v", "verify": True}])
    proc = subprocess.run([sys.executable, "-c", CLUSTER, str(spread), str(too_big)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"spread": (spread, reports[0]), "too_big": (too_big, reports[1])}


def test_a_two_node_cluster_spreads_the_rows_and_writes_the_same_bytes(local_hashes, two_nodes):
    m, report = two_nodes["spread"]
    assert report["exit_code"] == 0 and report["counts"]["converted"] == len(MODELS), report
    assert output_hashes(m) == local_hashes
    assert len({r["node"] for r in report["rows"]}) == 2  # one CPU per node: the rows had to use both


def test_a_row_no_node_can_hold_fails_at_once_instead_of_waiting_for_ever(two_nodes):
    _, report = two_nodes["too_big"]
    row = {r["id"]: r for r in report["rows"]}["v"]
    assert row["status"] == "failed" and row["attempts"] == 0
    assert row["reason"].startswith("needs 1.5") and "the largest Ray node offers 1.00 GiB" in row["reason"]
    assert report["exit_code"] == 2
