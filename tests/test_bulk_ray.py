"""The Ray executor on real Ray: a local instance the CLI starts itself, and a simulated two-node cluster.
Its outputs are byte for byte those of the local executor (compared by conversion.json's output hashes).
Skipped only when Ray (the `ray` extra) is not installed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, run_cli

ray = pytest.importorskip("ray")

MODELS = [FIXTURES / "gqa-tied-bf16-sharded", FIXTURES / "mha-untied-fp32", FIXTURES / "qwen2-tied-bf16"]
RAY_TMP = Path("/tmp") / f"rb{os.getpid()}"  # short: Ray's Unix socket paths must stay within 107 bytes


def manifest(root: Path, extra: list[dict] = ()) -> Path:
    rows = [{"src": str(p), "out": f"out/{p.name}", **({"format": "safetensors"} if i == 1 else {})}
            for i, p in enumerate(MODELS)] + list(extra)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def output_hashes(m: Path) -> dict[str, list]:
    """Each row's output files as conversion.json records them: name, size, sha256."""
    out = {}
    for p in MODELS:
        record = json.loads((m.parent / "out" / p.name / "conversion.json").read_text())
        out[p.name] = [(f["name"], f["size"], f["sha256"]) for f in record["outputs"]]
    return out


@pytest.fixture(scope="module")
def local_hashes(tmp_path_factory):
    m = manifest(tmp_path_factory.mktemp("local"))
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


def test_the_cli_starts_a_local_ray_and_writes_what_the_local_executor_writes(tmp_path, local_hashes, ray_tmp):
    m = manifest(tmp_path)
    proc = run_cli("bulk", m, "--executor", "ray", "--jobs", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bulk-report.json").read_text())
    assert report["executor"] == "ray" and report["counts"]["converted"] == len(MODELS)
    assert output_hashes(m) == local_hashes
    assert "INFO" not in proc.stderr  # Ray's own start-up chatter stays out of the per-row lines


@pytest.fixture(scope="module")
def two_nodes(ray_tmp):
    from ray.cluster_utils import Cluster
    node = {"num_cpus": 1, "memory": 2**30, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_a_two_node_cluster_spreads_the_rows_and_writes_the_same_bytes(tmp_path, local_hashes, two_nodes):
    import converter
    m = manifest(tmp_path)
    report = converter.run_bulk(m, converter.BulkOptions(executor="ray"))
    assert report["exit_code"] == 0 and report["counts"]["converted"] == len(MODELS), report
    assert output_hashes(m) == local_hashes
    assert len({r["node"] for r in report["rows"]}) == 2  # one CPU per node: the rows had to use both


def test_a_row_no_node_can_hold_fails_at_once_instead_of_waiting_for_ever(tmp_path, two_nodes):
    import converter
    m = manifest(tmp_path, [{"src": str(FIXTURES / "gqa-llama3-rope"), "out": "out/v", "verify": True}])
    report = converter.run_bulk(m, converter.BulkOptions(executor="ray"))
    row = {r["id"]: r for r in report["rows"]}["v"]
    assert row["status"] == "failed" and row["attempts"] == 0
    assert row["reason"].startswith("needs 1.5") and "the largest Ray node offers 1.00 GiB" in row["reason"]
    assert report["exit_code"] == 2
