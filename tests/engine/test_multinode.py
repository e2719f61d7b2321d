"""The two-node ``torchrun`` command of docs/multinode.md, run as two processes on loopback standing in
for two nodes (``--nnodes 2 --nproc_per_node 1``, ``--node_rank`` 0 and 1, each started on its own as on
its own node): each rank sees its RANK, WORLD_SIZE=2 and MASTER_ADDR, and the run (the toy task under
the documented ZeRO-3 config) trains its steps as one job of world size 2."""

import json
import re
import shlex
import subprocess

import pytest
from conftest import ROOT
from test_engine import free_port
from test_exit_teardown import PROBE as EXIT_PROBE
from test_registry import env, toy_config

PROBE = (
    EXIT_PROBE
    + """import toy_task  # noqa: F401 - registers toy_tokens
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
pathlib.Path(os.environ["PROBE_DIR"], f"rank{os.environ['RANK']}.json").write_text(
    json.dumps({k: os.environ.get(k) for k in keys}))
"""
)


def documented_torchrun() -> list[str]:
    """The torchrun command of docs/multinode.md, its line continuations joined."""
    text = (ROOT / "docs" / "multinode.md").read_text()
    block = re.search(r"```bash\n# on node1[^\n]*\n(torchrun .*?)\n```", text, re.S)
    assert block, "docs/multinode.md lost its torchrun example"
    return shlex.split(block.group(1).replace("\\\n", " "))


def test_documented_two_node_torchrun_on_loopback(tmp_path):
    cmd = documented_torchrun()
    port = free_port()
    swap = {
        "--nproc_per_node": "1",
        "--master_addr": "127.0.0.1",
        "--master_port": port,
        "--config": str(toy_config(tmp_path, max_steps=2, max_epoch=3)),
    }
    for i, word in enumerate(cmd[:-1]):
        if word in swap:
            cmd[i + 1] = swap[word]
    assert cmd[cmd.index("--nnodes") + 1] == "2" and "--node_rank" in cmd
    cmd.insert(cmd.index("train") + 1, "--import")
    cmd.insert(cmd.index("train") + 2, "probe")
    (tmp_path / "probe.py").write_text(PROBE)
    run_env = env()
    run_env.update(PROBE_DIR=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=f"{tmp_path}:{run_env['PYTHONPATH']}")
    procs = []
    for node_rank in ("0", "1"):
        node_cmd = list(cmd)
        node_cmd[node_cmd.index("--node_rank") + 1] = node_rank
        procs.append(
            subprocess.Popen(
                node_cmd, env=run_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
    seen = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    for rank, vars_ in seen.items():
        assert vars_["RANK"] == str(rank) and vars_["WORLD_SIZE"] == "2" and vars_["LOCAL_RANK"] == "0"
        assert vars_["MASTER_ADDR"] == "127.0.0.1" and vars_["MASTER_PORT"] == port
        assert vars_["GROUP_RANK"] == str(rank)  # the node rank: one process per "node"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    # each rank's group was destroyed before the interpreter's teardown; the ZeRO-3 engine, kept reachable by
    # DeepSpeed's module-level objects, keeps some gloo threads alive past it (distributed.release_at_exit)
    assert [json.loads((tmp_path / f"exit{r}.json").read_text())["group_alive"] for r in (0, 1)] == [False] * 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m.get("split") == "train"] == [1, 2]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
