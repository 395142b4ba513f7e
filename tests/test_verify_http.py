"""POST /runs/{run_id}/verify through the real trigger handler: an intact run passes, a
damaged one is named, recorded on the run and in the bucket; quick is the default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.cos.objects import CosObjectStore
from shared.domain.errors import StorageError
from tests.support.api import Api, deploy
from tests.support.backup import LocalBackup, drive
from tests.support.leaks import assert_no_secrets


@pytest.fixture
def api(local: LocalBackup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Api:
    return deploy(local, tmp_path, monkeypatch)


def backed_up(api: Api) -> dict[str, object]:
    status, body, _ = api.call("POST", "/runs")
    assert status == 202
    run = api.context().state.get_run(body["run_id"])
    assert run is not None
    drive(api.context(), run)
    status, detail, _ = api.call("GET", f"/runs/{body['run_id']}")
    assert status == 200
    return dict(detail)


def test_verify_over_http_passes_an_intact_run_and_names_damage(api: Api) -> None:
    run = backed_up(api)
    run_id = str(run["run_id"])
    status, report, _ = api.call("POST", "/runs/latest/verify")
    assert status == 200 and report["ok"] and report["quick"] and report["run_id"] == run_id
    assert {o["crc64"] for o in report["objects"]} == {"ok"}

    damage_orders(api, run)
    status, report, _ = api.call("POST", f"/runs/{run_id}/verify",
                                 body={"quick": False, "source": "shop"})
    assert status == 200 and not report["ok"] and not report["quick"]
    bad = [o for o in report["objects"] if not o["ok"]]
    assert [o["collection"] for o in bad] == ["orders"]
    assert {p["what"] for p in bad[0]["problems"]} == {"sha256", "crc64"}

    stored = api.context().state.get_run(run_id)
    assert stored is not None and stored.summary is not None
    last = stored.summary["last_verify"]
    assert last["ok"] is False and any("sha256" in p for p in last["problems"])
    assert json.loads(api.local.objects.read(last["report_key"]))["ok"] is False


def test_verify_over_http_says_what_is_wrong_with_the_request(api: Api) -> None:
    status, body, _ = api.call("POST", "/runs/20261121T020000123Z-1a2b3c4d/verify")
    assert status == 404 and body["field"] == "run_id"
    status, body, _ = api.call("POST", "/runs/latest/verify")
    assert status == 404 and "no finished run" in body["error"]
    status, body, _ = api.call("POST", "/runs/latest/verify", body={"quick": "yes"})
    assert status == 400 and body["field"] == "quick"
    status, body, _ = api.call("POST", "/runs/latest/verify", body={"fast": True})
    assert status == 400 and body["field"] == "fast" and "'quick'" in body["error"]


def damage_orders(api: Api, run: dict[str, object]) -> None:
    """One byte of the run's shop/orders object flipped in the bucket."""
    jobs = run["jobs"]
    assert isinstance(jobs, list)
    key = next(j["object_keys"][0] for j in jobs
               if (j["source"], j["collection"]) == ("shop", "orders"))
    data = api.local.objects.read(key)
    api.local.objects.put_stream(key, [data[:50] + bytes([data[50] ^ 1]) + data[51:]],
                                 content_type="application/x-ndjson")


def damaged_run(api: Api) -> str:
    """A backed-up run whose shop/orders object a full verify over HTTP found damaged."""
    run = backed_up(api)
    damage_orders(api, run)
    status, report, _ = api.call("POST", f"/runs/{run['run_id']}/verify", body={"quick": False})
    assert status == 200 and not report["ok"]
    return str(run["run_id"])


def test_get_collections_does_not_call_a_damaged_backup_the_last_good_one(api: Api) -> None:
    """README: GET /collections gives "its last good backup"; a good backup is one "not
    found damaged by a verify of its run" ("Keeping backups")."""
    run_id = damaged_run(api)
    status, listing, _ = api.call("GET", "/collections")
    assert status == 200
    shown = {(c["source"], c["collection"]): c for c in listing["collections"]}
    orders = shown[("shop", "orders")]
    assert orders["last_good"] is None or orders["last_good"]["run_id"] != run_id, orders
    assert orders["latest"]["run_id"] == run_id and orders["latest"]["verify_failed"] is True
    others = [c for key, c in shown.items() if key != ("shop", "orders")]
    assert others and all(c["last_good"]["run_id"] == run_id for c in others)
    assert not any(c["latest"]["verify_failed"] for c in others)


def test_get_run_shows_the_verifies_kept_on_the_run(api: Api) -> None:
    """README "Verifying": a verify asked for over HTTP or the CLI "is kept on the run
    (`summary.last_verify`, shown by `GET /runs/{run_id}`)"; the check after the run is
    shown beside it."""
    run = backed_up(api)
    assert run["last_verify"] is None
    after = run["verify"]
    assert isinstance(after, dict) and after["ok"] is True and after["mode"] == "quick"
    assert "shop/orders" in after["checked"] and after["failed"] == [] and after["problems"] == []

    run_id = damaged_run(api)
    status, detail, _ = api.call("GET", f"/runs/{run_id}")
    assert status == 200
    last = detail["last_verify"]
    assert last["ok"] is False and last["quick"] is False and last["failed"] == ["shop/orders"]
    assert any("sha256" in line for line in last["problems"]) and last["at"]
    assert json.loads(api.local.objects.read(last["report_key"]))["ok"] is False
    assert detail["verify"]["ok"] is True  # what the check after the run found stays


def test_a_later_verify_of_other_collections_does_not_clear_a_failed_one(api: Api) -> None:
    """A verify of shop/users alone passes after a verify found shop/orders damaged: orders
    was not checked again, so it stays damaged in GET /collections and for retention."""
    run_id = damaged_run(api)
    status, report, _ = api.call("POST", f"/runs/{run_id}/verify",
                                 body={"source": "shop", "collection": "users"})
    assert status == 200 and report["ok"]
    assert {o["collection"] for o in report["objects"]} == {"users"}

    status, listing, _ = api.call("GET", "/collections")
    assert status == 200
    orders = next(c for c in listing["collections"]
                  if (c["source"], c["collection"]) == ("shop", "orders"))
    assert orders["latest"]["verify_failed"] is True, orders
    assert orders["last_good"] is None or orders["last_good"]["run_id"] != run_id, orders
    status, detail, _ = api.call("GET", f"/runs/{run_id}")
    assert status == 200 and detail["last_verify"]["failed"] == ["shop/orders"], detail


def test_a_verify_request_the_api_cannot_take_gets_a_documented_answer(api: Api) -> None:
    """Every answer is checked against docs/openapi.yaml on the way (Api.call): a body
    that is not JSON is a 415 and one over 16 KiB a 413, naming what to fix."""
    run_id = str(backed_up(api)["run_id"])
    status, body, _ = api.call("POST", f"/runs/{run_id}/verify", raw_body="quick=false",
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert status == 415 and body["field"] == "Content-Type", body
    status, body, _ = api.call("POST", f"/runs/{run_id}/verify",
                               raw_body=json.dumps({"source": "x" * 20_000}))
    assert status == 413 and body["field"] == "body", body


def test_verify_of_one_collection_over_http_checks_the_latest_run_that_backed_it_up(
        api: Api) -> None:
    """POST /runs/latest/verify with a source and collection checks the newest run holding
    a backup of it, not a newer run that backed up something else; none is a 404 naming it."""
    run_id = str(backed_up(api)["run_id"])
    status, body, _ = api.call("POST", "/runs", body={"sources": ["archive"]})
    assert status == 202
    newer = api.context().state.get_run(body["run_id"])
    assert newer is not None and newer.run_id > run_id
    drive(api.context(), newer)

    status, report, _ = api.call("POST", "/runs/latest/verify",
                                 body={"source": "shop", "collection": "orders"})
    assert status == 200 and report["ok"] and report["run_id"] == run_id, report
    assert {(o["source"], o["collection"]) for o in report["objects"]} == {("shop", "orders")}
    status, body, _ = api.call("POST", "/runs/latest/verify",
                               body={"source": "shop", "collection": "gone"})
    assert status == 404 and "shop/gone" in body["error"], body


def test_a_full_verify_over_http_stops_reading_before_the_trigger_times_out(api: Api) -> None:
    """A full verify runs inside the trigger's SCF timeout (scf-trigger/serverless.yml):
    with too little time left to read the objects back it quick-checks them instead and
    says which, and how to read them back, rather than being killed mid-request."""
    run_id = str(backed_up(api)["run_id"])
    status, report, _ = api.call("POST", f"/runs/{run_id}/verify", body={"quick": False},
                                 invocation={"time_limit_in_ms": 1000})
    assert status == 200 and report["ok"] and not report["quick"], report
    keys = [o["key"] for o in report["objects"]]
    assert keys and report["quick_only"] == keys
    assert all(o["quick_only"] and o["records"] is None and o["crc64"] == "ok"
               for o in report["objects"])
    assert f"baas-backup verify {run_id}" in report["next_step"]
    assert f"{len(keys)} of {len(keys)} objects" in report["next_step"]
    status, detail, _ = api.call("GET", f"/runs/{run_id}")
    assert status == 200 and detail["last_verify"]["quick_only"] == keys
    assert detail["last_verify"]["next_step"] == report["next_step"]

    status, report, _ = api.call("POST", f"/runs/{run_id}/verify", body={"quick": False},
                                 invocation={"time_limit_in_ms": 120_000})
    assert status == 200 and report["quick_only"] == [] and report["next_step"] is None
    assert all(o["records"] is not None and not o["quick_only"] for o in report["objects"])


def test_a_quick_verify_over_http_stops_checking_before_the_trigger_times_out(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quick verify (the default) HEADs every object inside the trigger's SCF timeout:
    with thousands of objects, out of time, it stops once verify.QUICK_CHECKS_SECONDS of
    checks are spent (none here) and answers, naming what it did not check and how."""
    from shared.service import verify

    run_id = str(backed_up(api)["run_id"])
    monkeypatch.setattr(verify, "QUICK_CHECKS_SECONDS", 0.0)
    status, report, _ = api.call("POST", f"/runs/{run_id}/verify",
                                 invocation={"time_limit_in_ms": 1000})
    assert status == 200 and report["ok"] and report["quick"], report
    keys = [o["key"] for o in report["objects"]]
    assert keys and report["unchecked"] == keys and report["quick_only"] == []
    assert all(o["unchecked"] and o["bytes"] is None for o in report["objects"])
    assert f"{len(keys)} of {len(keys)} objects were not checked" in report["next_step"]
    assert f"baas-backup verify {run_id} --quick" in report["next_step"]
    status, detail, _ = api.call("GET", f"/runs/{run_id}")
    assert status == 200 and detail["last_verify"]["unchecked"] == keys
    assert detail["last_verify"]["next_step"] == report["next_step"]
    assert detail["last_verify"]["checked"] == []  # nothing checked, nothing verified

    status, report, _ = api.call("POST", f"/runs/{run_id}/verify",
                                 invocation={"time_limit_in_ms": 120_000})
    assert status == 200 and report["unchecked"] == [] and report["next_step"] is None
    assert all(o["bytes"] is not None and o["crc64"] == "ok" for o in report["objects"])


SIGNED = ("https://backups-1250000000.cos.ap-guangzhou.myqcloud.com/orders.jsonl"
          "?q-sign-algorithm=sha1&q-ak=AKIDleaked0000&q-signature=0123456789abcdef0123")


def test_a_verify_answer_redacts_its_problems_as_get_run_does(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage error quoting a signed URL or a token reaches a problem's detail: the
    verify's answer, the report in the bucket and the run detail show it redacted."""
    run_id = str(backed_up(api)["run_id"])

    read = CosObjectStore.iter_read

    def broken(self: CosObjectStore, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if key.endswith(".json"):  # manifests read as before: only the data breaks off
            yield from read(self, key, chunk_size)
            return
        raise StorageError(f"COS download of {key!r} failed at {SIGNED} "
                           "(x-cos-security-token: tok-leaked-123456)", key=key)

    monkeypatch.setattr(CosObjectStore, "iter_read", broken)
    status, report, _ = api.call("POST", f"/runs/{run_id}/verify", body={"quick": False})
    assert status == 200 and not report["ok"], report
    details = [p["detail"] for o in report["objects"] for p in o["problems"]]
    assert details and all("could not be read back" in d for d in details), details
    assert all("myqcloud.com/orders.jsonl" in d for d in details), details
    status, detail, _ = api.call("GET", f"/runs/{run_id}")
    assert status == 200 and detail["last_verify"]["problems"]
    stored = api.local.objects.read(detail["last_verify"]["report_key"]).decode()
    run = api.context().state.get_run(run_id)  # kept on the run (and alerted): redacted too
    assert run is not None and run.summary is not None
    kept = json.dumps(run.summary["last_verify"])
    for shown in (json.dumps(report), json.dumps(detail["last_verify"]), stored, kept):
        assert_no_secrets(shown, ["AKIDleaked0000", "0123456789abcdef0123", "tok-leaked-123456"])
