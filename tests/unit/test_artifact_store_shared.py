"""The artifact store on a directory several runners share (an NFS mount, say): real processes writing into
one root at once -- each round the same weights as every other writer, and weights of its own -- all
succeed and leave only whole, verified, content-addressed artifacts (temp name + rename; a writer whose
rename comes second to identical content keeps the first's copy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlci.artifacts import verify

ROUNDS = 20
WRITERS = 4

WRITER = """
import sys, time
from pathlib import Path
import torch
from mlci.artifacts import write_artifact

root, go, name, rounds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
print("ready", flush=True)
while not go.exists():  # start together
    time.sleep(0.001)
for i in range(rounds):
    manifest = {"run_id": f"{name}-{i}", "model": {}, "input": {}, "output": {}, "smoke": {}}
    same = write_artifact(root / f"same{i}", {"w": torch.full((4, 4), float(i))}, manifest)
    own = write_artifact(root / f"own{i}", {"w": torch.full((4, 4), float(hash(name) % 1000 + i))}, manifest)
    print(same.sha256, own.sha256)
"""


def test_writers_at_once_in_one_shared_root_all_succeed_and_keep_every_content_once(tmp_path: Path) -> None:
    root, go = tmp_path / "shared", tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(go), f"w{n}", str(ROUNDS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(WRITERS)
    ]  # fmt: skip
    assert all(w.stdout.readline() == "ready\n" for w in writers)  # every writer has imported torch
    go.touch()
    lines = []
    for w in writers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        lines.append([line.split() for line in out.splitlines()])
    for i in range(ROUNDS):
        same = {lines[n][i][0] for n in range(WRITERS)}
        own = {lines[n][i][1] for n in range(WRITERS)}
        assert len(same) == 1 and len(own) == WRITERS
        assert [p.name for p in (root / f"same{i}").iterdir()] == list(same), "one copy, no staging left"
        assert sorted(p.name for p in (root / f"own{i}").iterdir()) == sorted(own), "nothing lost"
        for folder in [*(root / f"same{i}").iterdir(), *(root / f"own{i}").iterdir()]:
            assert verify(folder)["run_id"].endswith(f"-{i}")
