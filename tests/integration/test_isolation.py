"""Tenant isolation: no endpoint lets one tenant see another's requests, answers, feedback or documents, and
no tenant can write events in another's name. (Retrieval: test_conversation.py; export: test_export_e2e.py.)"""

from __future__ import annotations

import time

import httpx

from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from tests.integration.helpers import new_tenant_key_sync


def test_one_tenant_cannot_reach_another_tenants_data(stack: Settings) -> None:
    tenant_a, key_a = new_tenant_key_sync(stack)
    tenant_b, key_b = new_tenant_key_sync(stack)
    base = f"http://127.0.0.1:{stack.edge_port}"
    a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    with httpx.Client(timeout=60) as http:
        answer = http.post(f"{base}/v1/chat/completions", headers=a, json={
            "model": "echo", "max_tokens": 4, "messages": [{"role": "user", "content": "secret of tenant a"}]})
        rid = answer.json()["id"]
        assert http.post(f"{base}/v1/feedback", headers=a, json={"response_id": rid, "rating": 5}).status_code == 200
        # B cannot give feedback on A's answer through the HTTP bridge either.
        forged = {"envelope": {"tenant_id": tenant_a}, "tenant_id": tenant_a, "response_id": rid, "kind": "THUMBS",
                  "thumbs_up": False, "rating": None, "comment": "forged", "corrected_answer": None}
        assert http.post(f"{base}/v1/events/chat.feedback", headers=b, json=forged).status_code == 404
        # An event B writes claiming to be A (tenant in the body) is stored under B: the key decides.
        doc = {"envelope": {"tenant_id": tenant_a}, "tenant_id": tenant_a, "document_id": "forged-doc",
               "source": "x.md", "title": "x", "text": "claims to be tenant a", "content_type": "text/markdown",
               "metadata": {}}
        stored = http.post(f"{base}/v1/events/documents.ingest", headers=b, json=doc)
        assert stored.status_code == 200, stored.text
        deadline = time.monotonic() + 30  # until A's request is in ClickHouse, so B's views could show it
        while not any(r["request_id"] == rid for r in http.get(f"{base}/api/requests", headers=a).json()["rows"]):
            assert time.monotonic() < deadline
            time.sleep(0.5)

        # B: A's ids look exactly like unknown ids, and A's rows are in none of B's views.
        assert http.post(f"{base}/v1/feedback", headers=b, json={"response_id": rid, "rating": 1}).status_code == 404
        assert http.get(f"{base}/api/requests/{rid}/timeline", headers=b).status_code == 404
        assert rid not in http.get(f"{base}/api/requests", headers=b).text
        for view in ("requests", "latency", "safety", "feedback", "hops"):
            r = http.get(f"{base}/api/metrics/{view}", headers=b)
            assert r.status_code == 200 and tenant_a not in r.text and rid not in r.text, (view, r.text[:300])
        counts = http.get(f"{base}/api/events/counts", headers=b).json()
        assert counts["tenant"] == tenant_b and "prompt_submitted" not in counts["counts"], counts
        # A sees its own.
        assert http.get(f"{base}/api/requests/{rid}/timeline", headers=a).status_code == 200
    client = clickhouse_client(stack)
    try:
        rows = client.query("SELECT tenant_id FROM events WHERE event_id = {id:String}",
                            parameters={"id": stored.json()["event_id"]}).result_rows
    finally:
        client.close()
    assert rows == [] or rows[0][0] == tenant_b  # stored under B, never A (the sink may not have it yet)
