"""``gatewayd jobs list|show|cancel`` (the real CLI in a subprocess) on the store of a running gateway."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.jobs.test_jobs_api import CHAT, MODEL, finished, gateway, job, submit
from tests.support.fake_backend import running_fake_backend
from tests.support.process import gatewayd_cli as cli
from tests.support.process import wait_for


def test_list_show_and_cancel(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake) as gw:
        done = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"]
        finished(gw, done)
        fake.set(hang=True)
        running = submit(gw, {"endpoint": "/v1/chat/completions", "request": CHAT}).json()["id"]
        wait_for(lambda: fake.stats().in_flight == 1, timeout=30, what="the job to run")

        listed = cli("jobs", "list", state_dir=state)
        assert listed.returncode == 0, listed.stderr
        assert done in listed.stdout
        assert running in listed.stdout
        assert listed.stdout.index(running) < listed.stdout.index(done)  # newest first
        only = json.loads(cli("jobs", "list", "--state", "succeeded", "--json", state_dir=state).stdout)
        assert [j["id"] for j in only] == [done]

        shown = cli("jobs", "show", done, state_dir=state)
        assert shown.returncode == 0
        assert "succeeded" in shown.stdout
        assert "chat.completion" in shown.stdout
        waited = cli("jobs", "show", done, "--wait", "--json", state_dir=state)
        assert json.loads(waited.stdout)["state"] == "succeeded"

        cancelled = cli("jobs", "cancel", running, state_dir=state)
        assert cancelled.returncode == 0, cancelled.stderr
        # the running instance sees the request at its next lease renewal and cuts the job
        wait_for(lambda: job(gw, running).json()["state"] == "cancelled", timeout=30, what="the cancel")
        wait_for(lambda: fake.stats().in_flight == 0, timeout=30, what="the upstream request to end")

        missing = cli("jobs", "show", "job_nope", state_dir=state)
        assert missing.returncode == 1
        assert "gatewayd jobs list" in missing.stderr
