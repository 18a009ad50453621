"""``shoal delete -f FILE`` on the embedded runtime: what a manifest file defines, last first.

The same verb on a cluster is in ``tests/kube/test_cli_server.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Shell
from tests.control.conftest import CLUSTER, job, wait_for

SLEEPER = ["python", "-c", "import signal, sys; signal.sigwait({signal.SIGTERM}); sys.exit(0)"]
TEAM_C = """
apiVersion: shoal.dev/v1alpha1
kind: Tenant
metadata: {name: team-c}
spec: {quota: {cpu: {nominal: 1}}}
"""


def test_delete_by_file_deletes_jobs_before_their_tenant(sh: Shell, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CLUSTER)
    assert sh("apply", "-f", str(tmp_path / "c.yaml")).returncode == 0
    mine = tmp_path / "mine.yaml"
    mine.write_text(TEAM_C + "---\n" + job("brief", "team-a", SLEEPER))
    applied = sh("apply", "-f", str(mine))
    assert applied.returncode == 0, applied.stderr

    def phase() -> str:
        return str(json.loads(sh("describe", "job", "brief", "-o", "json").stdout)["phase"])

    wait_for(lambda: phase() == "Running")
    deleted = sh("delete", "-f", str(mine))
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.splitlines() == ["trainingjob/brief deleted",
                                           "tenant/team-c deleted (0 token(s) revoked)"]
    wait_for(lambda: phase() == "Cancelled")
    tenants = [t["name"] for t in json.loads(sh("get", "tenants", "-o", "json").stdout)]
    assert tenants == ["team-a", "team-b"]
    again = sh("delete", "-f", str(mine))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "tenant/team-c not found"


def test_delete_by_file_takes_no_kind_and_checks_the_file_first(sh: Shell,
                                                                 tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: shoal.dev/v1alpha1\nkind: Tenant\nmetadata: {name: x}\n"
                   "spec: {quota: {cpu: {nominal: -1}}}\n")
    refused = sh("delete", "-f", str(bad))
    assert refused.returncode == 2 and str(bad) in refused.stderr
    assert "Traceback" not in refused.stderr
    mixed = sh("delete", "job", "x", "-f", str(bad))
    assert mixed.returncode == 2
    assert mixed.stderr.strip() == ("error: shoal delete -f: the file names what to delete; "
                                    "give no kind, names, --all or --tenant")
    assert not (sh.home / "server.json").exists()  # no control plane was needed
