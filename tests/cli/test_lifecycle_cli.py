"""The admin's verbs from the shell: create, list and revoke tokens; delete
tenants and node pools (refused, with exit code 1, while they are in use)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Shell
from tests.control.conftest import CLUSTER, job, wait_for

SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]


def _phase(sh: Shell, name: str) -> str:
    return str(json.loads(sh("describe", "job", name, "-o", "json").stdout)["phase"])


def test_tokens_from_the_shell(sh: Shell, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CLUSTER)
    assert sh("apply", "-f", str(tmp_path / "c.yaml")).returncode == 0
    made = sh("create", "token", "--tenant", "team-a", "--ttl", "12h", "--name", "ci")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("shoal_") and "\n" not in token, "the token alone on stdout"
    assert "expires" in made.stderr and "not shown again" in made.stderr
    listed = sh("get", "tokens")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "ROLE", "TENANT", "STATUS", "AGE", "EXPIRES"]
    token_id = token.split("_")[1]
    row = next(r for r in rows if r.startswith(token_id)).split()
    assert row[1:5] == ["ci", "tenant", "team-a", "active"]
    assert token.split("_", 2)[2] not in listed.stdout
    env = {**sh.env, "SHOAL_TOKEN": token}
    sh.env, admin_env = env, sh.env
    refused = sh("get", "tokens")
    assert refused.returncode == 1 and "only an admin token may list tokens" in refused.stderr
    sh.env = admin_env
    revoked = sh("delete", "token", token_id)
    assert revoked.returncode == 0 and f"token/{token_id} revoked" in revoked.stdout
    sh.env = env
    assert sh("get", "jobs").returncode == 1  # 401: the token is gone
    sh.env = admin_env
    statuses = {t["name"]: t["status"] for t in json.loads(sh("get", "tokens", "-o", "json").stdout)}
    assert statuses["ci"] == "revoked"
    bad = sh("create", "token", "--tenant", "team-a", "--ttl", "soon")
    assert bad.returncode == 2 and "--ttl" in bad.stderr


def test_deleting_tenants_and_node_pools_from_the_shell(sh: Shell, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CLUSTER + "---\n" + job("busy", "team-a", SLEEPER))
    assert sh("apply", "-f", str(tmp_path / "c.yaml")).returncode == 0
    wait_for(lambda: _phase(sh, "busy") == "Running")
    refused = sh("delete", "tenant", "team-a")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (  # as docs/cli.md shows it
        "error: tenant 'team-a' still has 1 active job (busy Running); nothing was deleted: "
        "delete it first (shoal delete job busy), wait until it has stopped, then delete the "
        "tenant again")
    pool = sh("delete", "nodepool", "local")
    assert pool.returncode == 1 and "runs pods of 1 job (team-a/busy Running)" in pool.stderr
    node = sh("delete", "node", "local-000")
    assert node.returncode == 2 and node.stderr.strip() == (
        "error: NodePool 'local-000' not found: it is a node of NodePool 'local' (nodes come "
        "and go with their pool: shoal delete nodepool local)")
    done = sh("delete", "tenant", "team-b")
    assert done.returncode == 0 and "tenant/team-b deleted (0 token(s) revoked)" in done.stdout
    missing = sh("delete", "tenant", "team-b")
    assert missing.returncode == 2 and "tenant 'team-b' not found" in missing.stderr
    assert sh("delete", "job", "busy").returncode == 0
    wait_for(lambda: _phase(sh, "busy") == "Cancelled")
    gone = sh("delete", "nodepool", "local")
    assert gone.returncode == 0 and "nodepool/local deleted (1 node(s))" in gone.stdout
    tenants = json.loads(sh("get", "tenants", "-o", "json").stdout)
    assert [t["name"] for t in tenants] == ["team-a"]
