"""OpenAI's batch API through the official openai client: a 1,000-line batch runs as jobs and its output
and error files come back in OpenAI's shapes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import openai

from tests.integration.jobs.test_jobs_api import FAST_JOBS, MODEL, gateway
from tests.support.fake_backend import running_fake_backend
from tests.support.process import wait_for

LINES = 1000


def test_a_batch_of_1000_lines_through_the_openai_client(tmp_path: Path) -> None:
    jobs = replace(FAST_JOBS, concurrency=32)
    with running_fake_backend(models=(MODEL,)) as fake, gateway(tmp_path, fake, jobs=jobs) as gw:
        client = openai.OpenAI(base_url=gw.openai_url, api_key="unused", max_retries=0)
        # every hundredth line names a model nobody serves: it fails, into the error file
        messages = [{"role": "user", "content": "hi"}]
        lines = [
            {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL if i % 100 else "missing", "messages": messages}}
            for i in range(LINES)
        ]  # fmt: skip
        source = tmp_path / "any name at all.jsonl"
        source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        with source.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        assert uploaded.bytes == source.stat().st_size
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress"
        assert batch.request_counts is not None
        assert batch.request_counts.total == LINES

        def done() -> openai.types.Batch | None:
            current = client.batches.retrieve(batch.id)
            return current if current.status == "completed" else None

        finished = wait_for(done, timeout=110, interval=0.2, what="the batch to complete")
        assert finished.request_counts is not None
        assert (finished.request_counts.completed, finished.request_counts.failed) == (990, 10)
        assert finished.output_file_id is not None
        assert finished.error_file_id is not None
        output = [
            json.loads(line) for line in client.files.content(finished.output_file_id).text.splitlines()
        ]
        errors = [json.loads(line) for line in client.files.content(finished.error_file_id).text.splitlines()]
        assert [line["custom_id"] for line in output] == [f"line-{i}" for i in range(LINES) if i % 100]
        assert all(line["response"]["status_code"] == 200 for line in output)
        assert output[0]["response"]["body"]["object"] == "chat.completion"
        assert [line["custom_id"] for line in errors] == [f"line-{i}" for i in range(0, LINES, 100)]
        assert all(line["response"]["status_code"] == 404 for line in errors)
        assert [b.id for b in client.batches.list().data] == [batch.id]
