"""WeChat's side of restoring, over real loopback HTTP against the emulator: the target
collection (exists, count, create), the streamed form upload into the env's storage, the
import job and its progress; round trips of JSON and CSV exports; a third-party platform's
mini programs; every error class; no secret in logs or on the upload's wire."""

from __future__ import annotations

import io
import logging
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest

from devkit.compare import docs_as_csv_rows
from devkit.sample_data import make_docs
from shared.domain.errors import Fatal, Forgotten, Retryable, RetryLater, VerificationFailed
from shared.logs import configure_logging
from shared.platforms.wechat import platform as wechat_platform
from shared.platforms.wechat.platform import WeChatClient
from shared.ports import FileImportPlatform, ImportProgress, RestorablePlatform
from tests.support.backup import APPID, ENV_ID, SECRET, LocalBackup
from tests.support.leaks import assert_no_secrets

UPLOAD = "/tcb/uploadfile"
IMPORT = "/tcb/databasemigrateimport"
ADD = "/tcb/databasecollectionadd"
COMPONENT = "wx00000000000000c1"
COMPONENT_SECRET = "component-secret-8a7b6c"
TICKET = "ticket@@@5f4e3d2c1b"
APP_A, ENV_A = "wx000000000000000a", "shop-a-prod-1a"
APP_B, ENV_B = "wx000000000000000b", "shop-b-prod-2b"


def client_for(local: LocalBackup, **overrides: Any) -> WeChatClient:
    ctx = local.context(local.config(local.wechat_source(**overrides)))
    return cast(WeChatClient, ctx.platforms.get(overrides.get("name", "shop")))


def export(client: WeChatClient, collection: str) -> bytes:
    """A backup file, made the way the finisher gets it."""
    job = client.start(collection, "job-1")
    for _ in range(50):
        progress = client.check(collection, job)
        if progress.state == "ready":
            return b"".join(client.open(collection, job))
        assert progress.state == "running", progress.message
    raise AssertionError("the export did not finish")


def pieces(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def restore(client: WeChatClient, collection: str, data: bytes, mode: str = "insert",
            file_type: str = "json", name: str = "run-1-0001.json") -> ImportProgress:
    job = client.send_import(collection, cast(Any, mode), file_type=file_type, name=name,
                             chunks=pieces(data), size=len(data))
    assert job is not None and job.isdigit()
    return wait(client, collection, job)


def wait(client: WeChatClient, collection: str, job: str) -> ImportProgress:
    for _ in range(50):
        progress = client.check_import(collection, job)
        if progress.state != "running":
            return progress
    raise AssertionError("the import did not finish")


@pytest.fixture
def shop(local: LocalBackup) -> LocalBackup:
    local.seed("orders", make_docs(40, seed=3))
    return local


# the contract -------------------------------------------------------------------------
def test_the_client_is_a_restorable_file_import_platform(shop: LocalBackup) -> None:
    client = client_for(shop)

    assert isinstance(client, RestorablePlatform) and isinstance(client, FileImportPlatform)
    assert client.restore_modes == frozenset({"new", "insert", "upsert"})


# the target -----------------------------------------------------------------------------
def test_target_exists_and_count_page_through_the_listing(
        shop: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(5):
        shop.seed(f"extra-{index}", make_docs(index, seed=index))
    monkeypatch.setattr(wechat_platform, "LISTING_PAGE", 2)
    client = client_for(shop)

    assert client.target_exists("orders") and client.target_exists("extra-4")
    assert not client.target_exists("missing")
    assert client.count("orders") == 40 and client.count("extra-3") == 3
    # each answer is a fresh listing: 6 collections in pages of 2, each after the first
    # starting at the last one read (1 new per page)
    assert shop.emulator.calls["/tcb/databasecollectionget"] == 5 * 5
    with pytest.raises(Fatal, match="'missing' does not exist"):
        client.count("missing")


def test_create_target_makes_an_empty_collection_and_is_idempotent(shop: LocalBackup) -> None:
    client = client_for(shop)

    client.create_target("orders-restored", like="orders")
    client.create_target("orders-restored", like="orders")  # "already exists" is success

    assert shop.emulator.docs(ENV_ID, "orders-restored") == []
    assert client.count("orders-restored") == 0
    assert shop.emulator.calls[ADD] == 2


def test_create_target_refused_and_absent_fails_saying_so(shop: LocalBackup) -> None:
    shop.emulator.inject_errcode(ADD, -501007, errmsg="param error")

    with pytest.raises(Fatal, match=r"could not create collection 'new'.*-501007"):
        client_for(shop).create_target("new", like="orders")


# round trips ------------------------------------------------------------------------------
def test_json_export_imports_back_to_the_same_documents(shop: LocalBackup) -> None:
    client = client_for(shop)
    original = shop.emulator.docs(ENV_ID, "orders")
    data = export(client, "orders")
    shop.emulator.clear_collection(ENV_ID, "orders")

    progress = restore(client, "orders", data)

    assert progress == ImportProgress("done", imported=40, rejected=0, message="导入完成.")
    assert shop.emulator.docs(ENV_ID, "orders") == original
    assert client.count("orders") == 40
    (job,) = shop.emulator.import_jobs()
    assert job["file_type"] == 1 and job["conflict_mode"] == 1 and job["stop_on_error"] is False
    assert job["file_path"] == "baas-backup-restores/orders/run-1-0001.json"
    assert shop.emulator.stored_file(ENV_ID, job["file_path"]) == data


def test_csv_export_imports_back_to_the_same_cells(shop: LocalBackup) -> None:
    """CSV keeps cells, not types: numbers come back as numbers, but true/false, nested
    objects and arrays come back as text and null or "" as a missing field (the import
    guide gives CSV only a header row of keys and rows of values)."""
    client = client_for(shop, file_type="csv")
    original = shop.emulator.docs(ENV_ID, "orders")
    data = export(client, "orders")
    shop.emulator.clear_collection(ENV_ID, "orders")

    progress = restore(client, "orders", data, file_type="csv", name="run-1-0001.csv")

    assert progress.state == "done" and progress.imported == 40 and progress.rejected == 0
    restored = shop.emulator.docs(ENV_ID, "orders")
    assert docs_as_csv_rows(restored) == docs_as_csv_rows(original)
    assert export(client, "orders") == data  # exported again: the very same file
    first = restored[0]
    assert first["total"] == original[0]["total"]  # numbers stay numbers
    assert first["paid"] in ("true", "false") and isinstance(first["address"], str)


def test_restore_into_a_new_collection_leaves_the_original_alone(shop: LocalBackup) -> None:
    client = client_for(shop)
    original = shop.emulator.docs(ENV_ID, "orders")
    data = export(client, "orders")
    shop.emulator.add_collection(ENV_ID, "orders", original[:5])  # the source changed since

    client.create_target("orders-20261128", like="orders")
    progress = restore(client, "orders-20261128", data, mode="new")

    assert progress.imported == 40 and progress.rejected == 0
    assert shop.emulator.docs(ENV_ID, "orders-20261128") == original
    assert shop.emulator.docs(ENV_ID, "orders") == original[:5]
    assert shop.emulator.import_jobs()[0]["conflict_mode"] == 2


def test_upsert_into_the_original_puts_every_document_back(shop: LocalBackup) -> None:
    client = client_for(shop)
    original = shop.emulator.docs(ENV_ID, "orders")
    data = export(client, "orders")
    damaged = [{**doc, "total": -1} for doc in original[:10]] + [{"_id": "new-one", "x": 1}]
    shop.emulator.add_collection(ENV_ID, "orders", damaged)

    progress = restore(client, "orders", data, mode="upsert")

    assert progress.imported == 40 and progress.rejected == 0
    assert shop.emulator.docs(ENV_ID, "orders") == [*original[:10], {"_id": "new-one", "x": 1}, *original[10:]]
    assert shop.emulator.import_jobs()[0]["conflict_mode"] == 2


def test_insert_keeps_documents_already_there_and_counts_them_rejected(shop: LocalBackup) -> None:
    client = client_for(shop)
    original = shop.emulator.docs(ENV_ID, "orders")
    data = export(client, "orders")
    kept = [{**doc, "total": -1} for doc in original[:10]]
    shop.emulator.add_collection(ENV_ID, "orders", kept)

    progress = restore(client, "orders", data, mode="insert")

    assert progress.state == "done" and progress.imported == 30 and progress.rejected == 10
    assert shop.emulator.docs(ENV_ID, "orders") == kept + original[10:]


def test_sending_the_same_part_again_converges(shop: LocalBackup) -> None:
    """A finisher that died after WeChat accepted the import sends the part again: the
    upload overwrites the same file, and upsert (modes new and upsert) ends where one
    import would have."""
    client = client_for(shop)
    original = shop.emulator.docs(ENV_ID, "orders")
    data = export(client, "orders")
    shop.emulator.clear_collection(ENV_ID, "orders")

    first = restore(client, "orders", data, mode="upsert")
    second = restore(client, "orders", data, mode="upsert")

    assert first == second and second.imported == 40
    assert shop.emulator.docs(ENV_ID, "orders") == original
    assert shop.emulator.stored_paths(ENV_ID) == ["baas-backup-restores/orders/run-1-0001.json"]
    job = shop.emulator.import_jobs()[-1]["job_id"]
    assert client.check_import("orders", str(job)) == second  # asking again changes nothing


def test_an_empty_backup_imports_nothing(shop: LocalBackup) -> None:
    client = client_for(shop)
    client.create_target("empty", like="orders")

    progress = restore(client, "empty", b"")

    assert progress.imported == 0 and progress.rejected == 0
    assert shop.emulator.docs(ENV_ID, "empty") == []


# the upload --------------------------------------------------------------------------------
def test_the_upload_is_streamed_in_bounded_memory(shop: LocalBackup) -> None:
    """32 MiB through the client (and the emulator, in the same process) while tracemalloc
    watches: the file is never held whole on either side (the peak stays the same, about
    7 MiB of 1 MiB buffers, for 12 or 48 MiB)."""
    client = client_for(shop)
    client.create_target("big", like="orders")
    line = b'{"_id":"%08d","pad":"' + b"x" * 1000 + b'"}\n'
    count = 32 * 1024
    size = len(line % 0) * count

    def generated() -> Iterator[bytes]:
        batch = 1024
        for start in range(0, count, batch):
            yield b"".join(line % i for i in range(start, start + batch))

    tracemalloc.start()
    try:
        job = client.send_import("big", "new", file_type="json", name="big.json",
                                 chunks=generated(), size=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 12 * 1024 * 1024 < size / 2, f"peak {peak} bytes"
    assert job is not None and wait(client, "big", job).imported == count


def test_nothing_of_ours_goes_to_the_upload_url(shop: LocalBackup) -> None:
    client = client_for(shop)
    data = export(client, "orders")

    restore(client, "orders", data, mode="upsert")

    (request,) = shop.emulator.upload_requests
    assert request["query"] == "" and request["path"] == "/_cos/shop-prod-1a2b3c/baas-backup-restores/orders/run-1-0001.json"
    assert int(request["headers"]["content-length"]) > len(data)
    assert "transfer-encoding" not in request["headers"]
    for token in shop.emulator.issued_tokens():
        assert token not in repr(request)


def test_a_redirected_upload_is_not_followed(shop: LocalBackup) -> None:
    shop.emulator.redirect_uploads = True
    client = client_for(shop)

    with pytest.raises(Fatal, match=r"HTTP 307.*not followed"):
        client.send_import("orders", "insert", file_type="json", name="a.json",
                           chunks=[b"{}\n"], size=3)

    assert shop.emulator.calls["/_redirected"] == 0
    assert shop.emulator.calls[IMPORT] == 0


@pytest.mark.parametrize("status", [403, 500, 503])
def test_a_refused_upload_is_retryable_and_a_fresh_link_works(shop: LocalBackup, status: int) -> None:
    client = client_for(shop)
    data = export(client, "orders")
    shop.emulator.refuse_next_uploads(status=status)

    with pytest.raises(Retryable, match=f"HTTP {status}"):
        client.send_import("orders", "upsert", file_type="json", name="a.json",
                           chunks=pieces(data), size=len(data))

    assert shop.emulator.calls[IMPORT] == 0  # nothing imported from a failed upload
    assert restore(client, "orders", data, mode="upsert", name="a.json").imported == 40
    assert shop.emulator.calls[UPLOAD] == 2


def test_cos_refusing_the_file_fails_with_what_to_check(shop: LocalBackup) -> None:
    shop.emulator.refuse_next_uploads(status=400)

    with pytest.raises(Fatal, match=r"HTTP 400 \(AccessDenied.*check the env's cloud storage"):
        client_for(shop).send_import("orders", "insert", file_type="json", name="a.json",
                                     chunks=[b"{}\n"], size=3)


def test_an_object_shorter_than_announced_is_not_imported(shop: LocalBackup) -> None:
    client = client_for(shop)

    with pytest.raises(Retryable, match="ended after 3 of its 10 bytes"):
        client.send_import("orders", "insert", file_type="json", name="a.json",
                           chunks=[b"{}\n"], size=10)
    with pytest.raises(Fatal, match="more than the 2 bytes"):
        client.send_import("orders", "insert", file_type="json", name="a.json",
                           chunks=[b"{}\n"], size=2)

    assert shop.emulator.calls[IMPORT] == 0 and shop.emulator.stored_paths(ENV_ID) == []


def test_a_damaged_backup_stops_the_upload_with_the_callers_error(shop: LocalBackup) -> None:
    """The service's reader raises VerificationFailed after the last chunk when the
    object's SHA-256 is wrong: the form is never completed, so nothing is stored."""
    def damaged() -> Iterator[bytes]:
        yield b'{"_id":"a"}\n'
        raise VerificationFailed("backup object x no longer matches its manifest")

    with pytest.raises(VerificationFailed, match="no longer matches"):
        client_for(shop).send_import("orders", "insert", file_type="json", name="a.json",
                                     chunks=damaged(), size=12)

    assert shop.emulator.calls[IMPORT] == 0 and shop.emulator.stored_paths(ENV_ID) == []


# errors of the API calls ------------------------------------------------------------------
def test_a_rejected_token_is_renewed_once_during_a_restore(shop: LocalBackup) -> None:
    client = client_for(shop)
    data = export(client, "orders")
    shop.emulator.invalidate_tokens()

    assert restore(client, "orders", data, mode="upsert").imported == 40
    assert shop.emulator.calls["/cgi-bin/stable_token"] == 2


def test_a_busy_import_call_is_retried_and_starts_one_job(shop: LocalBackup) -> None:
    client = client_for(shop)
    data = export(client, "orders")
    shop.emulator.inject_errcode(IMPORT, -1, times=2)

    assert restore(client, "orders", data, mode="upsert").imported == 40
    assert shop.emulator.calls[IMPORT] == 3 and len(shop.emulator.import_jobs()) == 1


def test_quota_on_the_import_asks_to_wait(shop: LocalBackup) -> None:
    from shared.domain.errors import RetryLater

    shop.emulator.inject_errcode(IMPORT, -501004, errmsg="concurrency")
    with pytest.raises(RetryLater):
        client_for(shop).send_import("orders", "insert", file_type="json", name="a.json",
                                     chunks=[b"{}\n"], size=3)


def test_importing_into_a_missing_collection_fails(shop: LocalBackup) -> None:
    with pytest.raises(Fatal, match="-502005"):
        client_for(shop).send_import("gone", "insert", file_type="json", name="a.json",
                                     chunks=[b"{}\n"], size=3)


def test_an_upload_answer_of_another_shape_fails_loudly(shop: LocalBackup) -> None:
    shop.emulator.upload_answer = lambda answer: {k: v for k, v in answer.items() if k != "url"}

    with pytest.raises(Fatal, match=r"does not recognise.*fields: authorization, cos_file_id"):
        client_for(shop).send_import("orders", "insert", file_type="json", name="a.json",
                                     chunks=[b"{}\n"], size=3)


def test_an_upload_answer_without_cos_file_id_leaves_the_field_out(shop: LocalBackup) -> None:
    """componenttcb/uploadfile documents no cos_file_id in its answer."""
    shop.emulator.upload_answer = lambda answer: {k: v for k, v in answer.items() if k != "cos_file_id"}
    client = client_for(shop)
    data = export(client, "orders")

    assert restore(client, "orders", data, mode="upsert").imported == 40


@pytest.mark.parametrize("answer", [{}, {"job_id": "²"}])
def test_an_import_answer_without_a_job_id_fails_without_starting_another(
        shop: LocalBackup, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any]) -> None:
    monkeypatch.setattr(shop.emulator, "_api_import", lambda app, payload: answer)

    with pytest.raises(Fatal, match=r"without a numeric job_id.*may have started"):
        client_for(shop).send_import("orders", "insert", file_type="json", name="a.json",
                                     chunks=[b"{}\n"], size=3)


@pytest.mark.parametrize(("mode", "file_type", "name", "words"), [
    ("replace", "json", "a.json", "not 'replace'"),
    ("insert", "xml", "a.json", "not 'xml'"),
    ("insert", "json", "../a.json", "cannot name a restore file"),
    ("insert", "json", 'a".json', "cannot name a restore file"),
])
def test_requests_the_platform_cannot_take_fail_before_any_call(
        shop: LocalBackup, mode: str, file_type: str, name: str, words: str) -> None:
    with pytest.raises(Fatal, match=words):
        client_for(shop).send_import("orders", cast(Any, mode), file_type=file_type, name=name,
                                     chunks=[b"{}\n"], size=3)
    assert shop.emulator.calls[UPLOAD] == 0


# progress ------------------------------------------------------------------------------------
def test_progress_moves_from_running_to_done(shop: LocalBackup) -> None:
    shop.emulator.polls_until_ready = 3
    client = client_for(shop)
    data = export(client, "orders")
    shop.emulator.clear_collection(ENV_ID, "orders")
    job = client.send_import("orders", "insert", file_type="json", name="a.json",
                             chunks=[data], size=len(data))
    assert job is not None

    states = [client.check_import("orders", job).state for _ in range(5)]

    assert states == ["running"] * 4 + ["done"]


def test_a_failed_import_says_why(shop: LocalBackup) -> None:
    shop.emulator.fail_import(ENV_ID, "orders", "导入失败: 文件格式错误")

    progress = restore(client_for(shop), "orders", b'{"_id":"a"}\n')

    assert progress.state == "failed" and "导入失败: 文件格式错误" in progress.message
    assert progress.imported == 0


def test_records_the_import_refused_are_reported(shop: LocalBackup) -> None:
    shop.emulator.clear_collection(ENV_ID, "orders")
    data = b'{"_id":"a","n":1}\nnot json\n{"_id":"a","n":2}\n{".bad":1}\n{"_id":"b"}\n'

    progress = restore(client_for(shop), "orders", data, mode="insert")

    assert progress.state == "done" and progress.imported == 2 and progress.rejected == 3
    assert shop.emulator.docs(ENV_ID, "orders") == [{"_id": "a", "n": 1}, {"_id": "b"}]


@pytest.mark.parametrize(("answer", "error", "words"), [
    ({"status": "paused"}, RetryLater, "import job .* status 'paused'.*waiting up to 30 minutes"),
    ({"record_success": 1}, Fatal, "without status.*api_base"),
    ({"status": "success", "record_success": "many"}, Fatal, "record_success = 'many'"),
    ({"status": "success", "record_success": "²"}, Fatal, "record_success = '²'"),
    ({"status": "fail", "record_fail": "³"}, Fatal, "record_fail = '³'"),
])
def test_an_import_status_of_another_shape_fails_loudly(
        shop: LocalBackup, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any],
        error: type[Exception], words: str) -> None:
    client = client_for(shop)
    job = client.send_import("orders", "upsert", file_type="json", name="a.json",
                             chunks=[b"{}\n"], size=3)
    monkeypatch.setattr(shop.emulator, "_import_info", lambda job: answer)

    with pytest.raises(error, match=words):
        client.check_import("orders", job or "")


def test_an_undocumented_import_status_fails_naming_it_once_the_wait_is_over(
        shop: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wechat_platform, "UNDOCUMENTED_STATUS_WAIT", timedelta(0))
    client = client_for(shop)
    job = client.send_import("orders", "upsert", file_type="json", name="a.json",
                             chunks=[b"{}\n"], size=3)
    monkeypatch.setattr(shop.emulator, "_import_info", lambda job: {"status": "paused"})

    progress = client.check_import("orders", job or "")

    assert progress.state == "failed", progress
    assert "import job" in progress.message and "'paused'" in progress.message
    assert "still so after" in progress.message and "api_base" in progress.message


def test_an_import_wechat_forgot_is_named(shop: LocalBackup) -> None:
    with pytest.raises(Forgotten, match="no longer knows import job 999"):
        client_for(shop).check_import("orders", "999")
    with pytest.raises(Fatal, match="not a WeChat import job id"):
        client_for(shop).check_import("orders", "abc")
    with pytest.raises(Fatal, match="not a WeChat import job id"):
        client_for(shop).check_import("orders", "²")


# a third-party platform --------------------------------------------------------------------
@pytest.fixture
def platform_apps(local: LocalBackup) -> dict[str, Any]:
    emulator = local.emulator
    emulator.add_component(COMPONENT, COMPONENT_SECRET, TICKET)
    for appid, env in ((APP_A, ENV_A), (APP_B, ENV_B)):
        emulator.add_app(appid, f"own-secret-of-{appid}")
        emulator.add_env(appid, env)
        emulator.add_collection(env, "orders", make_docs(25, seed=len(env)))
    emulator.authorize(COMPONENT, APP_A)
    refresh_b = emulator.authorize(COMPONENT, APP_B)
    local.environ.update(COMPONENT_SECRET=COMPONENT_SECRET, COMPONENT_TICKET=TICKET,
                         SHOP_B_REFRESH=refresh_b)
    source = {
        "type": "wechat-platform", "component_appid": COMPONENT,
        "component_secret": "${COMPONENT_SECRET}", "verify_ticket": "${COMPONENT_TICKET}",
        "api_base": emulator.base_url,
        "apps": [{"name": "shop-a", "appid": APP_A, "env": ENV_A, "collections": ["orders"]},
                 {"name": "shop-b", "appid": APP_B, "env": ENV_B, "collections": ["orders"],
                  "authorizer_token": {"refresh_token": "${SHOP_B_REFRESH}"}}],
    }
    ctx = local.context(local.config(source))
    return {"shop-a": ctx.platforms.get("shop-a"), "shop-b": ctx.platforms.get("shop-b")}


@pytest.mark.parametrize(("app", "env", "calls"), [
    ("shop-a", ENV_A, ["/componenttcb/dbcollection", "/componenttcb/uploadfile",
                       "/componenttcb/dbimport", "/componenttcb/dbmigrationstate"]),
    ("shop-b", ENV_B, [ADD, UPLOAD, IMPORT, "/tcb/databasemigratequeryinfo"]),
])
def test_a_third_party_platform_restores_its_mini_programs(
        local: LocalBackup, platform_apps: dict[str, Any], app: str, env: str,
        calls: list[str]) -> None:
    """shop-a has only the platform's component token (componenttcb/*); shop-b an
    authorizer token, which the plain /tcb/* calls take."""
    client = cast(WeChatClient, platform_apps[app])
    original = local.emulator.docs(env, "orders")
    data = export(client, "orders")

    client.create_target("orders-restored", like="orders")
    progress = restore(client, "orders-restored", data, mode="new")

    assert progress.imported == 25 and progress.rejected == 0
    assert local.emulator.docs(env, "orders-restored") == original
    assert client.count("orders-restored") == 25
    assert all(local.emulator.calls[path] >= 1 for path in calls)


# secrets -----------------------------------------------------------------------------------
def test_no_token_or_upload_credential_reaches_the_logs(shop: LocalBackup) -> None:
    stream = io.StringIO()
    configure_logging(logging.DEBUG, stream=stream)
    client = client_for(shop)
    data = export(client, "orders")
    shop.emulator.refuse_next_uploads(status=403)
    with pytest.raises(Retryable) as refused:
        client.send_import("orders", "upsert", file_type="json", name="a.json",
                           chunks=pieces(data), size=len(data))
    logging.getLogger("test").warning("restore step failed", extra={"reason": str(refused.value)})
    shop.emulator.invalidate_tokens()
    shop.emulator.redirect_uploads = True
    with pytest.raises(Fatal) as redirected:
        client.send_import("orders", "upsert", file_type="json", name="a.json",
                           chunks=pieces(data), size=len(data))
    logging.getLogger("test").error("restore failed", extra={"reason": str(redirected.value)})
    shop.emulator.redirect_uploads = False
    restore(client, "orders", data, mode="upsert")

    text = stream.getvalue()
    assert "restore file uploaded" in text and "WeChat import started" in text
    secrets = shop.emulator.issued_tokens() + shop.emulator.issued_upload_secrets()
    assert len(secrets) >= 6
    assert_no_secrets(text + str(refused.value) + str(redirected.value), secrets)


def test_a_listing_without_counts_fails_loudly(shop: LocalBackup) -> None:
    shop.emulator.listing_answer = lambda answer: {**answer, "collections": [
        {"name": item["name"]} for item in answer["collections"]]}

    with pytest.raises(Fatal, match="without a numeric `count`"):
        client_for(shop).count("orders")


def test_a_count_listed_as_digits_is_read_as_a_number(shop: LocalBackup) -> None:
    """databaseCollectionGet lists each collection's `count`; a number sent as its digits
    (as WeChat does for job_id and record counts elsewhere) is still that number, not a
    listing "without a count"; a `true` is not a count."""
    shop.emulator.listing_answer = lambda answer: {**answer, "collections": [
        {**item, "count": str(item["count"])} for item in answer["collections"]]}

    assert client_for(shop).count("orders") == 40

    shop.emulator.listing_answer = lambda answer: {**answer, "collections": [
        {**item, "count": True} for item in answer["collections"]]}
    with pytest.raises(Fatal, match="without a numeric `count`"):
        client_for(shop).count("orders")


# the emulator's reading of the storage and import documents ----------------------------------
def _api(local: LocalBackup, path: str, body: dict[str, Any]) -> dict[str, Any]:
    token = httpx.post(f"{local.emulator.base_url}/cgi-bin/stable_token", json={
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET}).json()["access_token"]
    answer: dict[str, Any] = httpx.post(f"{local.emulator.base_url}{path}",
                                        params={"access_token": token}, json=body).json()
    return answer


def _form(answer: dict[str, Any], path: str, data: bytes, **changes: str) -> httpx.Response:
    fields = {"key": path, "Signature": answer["authorization"],
              "x-cos-security-token": answer["token"], "x-cos-meta-fileid": answer["cos_file_id"],
              **changes}
    return httpx.post(answer["url"], data=fields, files={"file": ("f", data)})


def test_the_emulated_storage_checks_the_form_like_cos(shop: LocalBackup) -> None:
    answer = _api(shop, UPLOAD, {"env": ENV_ID, "path": "p/a.json"})
    assert answer["errcode"] == 0 and answer["file_id"].startswith("cloud://")

    assert _form(answer, "p/a.json", b"x", **{"x-cos-security-token": "forged"}).status_code == 403
    assert _form(answer, "p/a.json", b"x", Signature="q-signature=forged").status_code == 403
    assert _form(answer, "p/b.json", b"x").status_code == 400  # key is not the granted path
    unsized = httpx.post(answer["url"], content=iter([b"x"]),
                         headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert unsized.status_code == 411 and b"MissingContentLength" in unsized.content
    assert shop.emulator.stored_paths(ENV_ID) == []

    assert _form(answer, "p/a.json", b'{"_id":"x"}\n').status_code == 204
    assert shop.emulator.stored_file(ENV_ID, "p/a.json") == b'{"_id":"x"}\n'


def test_an_emulated_upload_link_runs_out(shop: LocalBackup) -> None:
    shop.emulator.upload_ttl = -1
    answer = _api(shop, UPLOAD, {"env": ENV_ID, "path": "p/a.json"})

    refused = _form(answer, "p/a.json", b"x")

    assert refused.status_code == 403 and b"Request has expired" in refused.content


def test_the_emulated_import_reads_csv_by_its_header(shop: LocalBackup) -> None:
    shop.emulator.add_collection(ENV_ID, "people", [])
    answer = _api(shop, UPLOAD, {"env": ENV_ID, "path": "p/a.csv"})
    data = "_id,name,age,tags\n1,张三,45,\"[1,2]\"\n2,李四,,x\n3,ragged\n4,王五,1e3,\n".encode()
    assert _form(answer, "p/a.csv", data).status_code == 204
    job = _api(shop, IMPORT, {"env": ENV_ID, "collection_name": "people", "file_path": "p/a.csv",
                              "file_type": 2, "stop_on_error": False, "conflict_mode": 1})["job_id"]

    for _ in range(4):
        info = _api(shop, "/tcb/databasemigratequeryinfo", {"env": ENV_ID, "job_id": job})

    assert (info["status"], info["record_success"], info["record_fail"]) == ("success", 3, 1)
    assert shop.emulator.docs(ENV_ID, "people") == [
        {"_id": "1", "name": "张三", "age": 45, "tags": "[1,2]"},
        {"_id": "2", "name": "李四", "tags": "x"},
        {"_id": "4", "name": "王五", "age": "1e3"},
    ]


def test_the_emulated_import_can_stop_on_the_first_error_or_miss_its_file(shop: LocalBackup) -> None:
    answer = _api(shop, UPLOAD, {"env": ENV_ID, "path": "p/a.json"})
    assert _form(answer, "p/a.json", b'{"_id":"a"}\nnope\n{"_id":"b"}\n').status_code == 204
    stopping = _api(shop, IMPORT, {"env": ENV_ID, "collection_name": "orders", "file_path": "p/a.json",
                                   "file_type": 1, "stop_on_error": True, "conflict_mode": 2})["job_id"]
    missing = _api(shop, IMPORT, {"env": ENV_ID, "collection_name": "orders", "file_path": "p/none",
                                  "file_type": 1, "stop_on_error": False, "conflict_mode": 2})["job_id"]

    for _ in range(4):
        stopped = _api(shop, "/tcb/databasemigratequeryinfo", {"env": ENV_ID, "job_id": stopping})
        lost = _api(shop, "/tcb/databasemigratequeryinfo", {"env": ENV_ID, "job_id": missing})

    assert stopped["status"] == "fail" and "record 2" in stopped["error_msg"]
    assert stopped["record_success"] == 1 and stopped["record_fail"] == 1
    assert lost["status"] == "fail" and "not found" in lost["error_msg"]


def test_a_plain_http_upload_url_is_refused_off_loopback(
        shop: LocalBackup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator is on loopback (http allowed there); anywhere else the form's
    credentials travel only over https."""
    from shared.platforms.wechat import restore as wechat_restore

    monkeypatch.setattr(wechat_restore, "is_loopback_url", lambda url: False)

    with pytest.raises(Fatal, match="plain-http upload URL"):
        client_for(shop).send_import("orders", "insert", file_type="json", name="a.json",
                                     chunks=[b"{}\n"], size=3)
    assert shop.emulator.upload_requests == []


# through the service, as the poller and the finisher run it ------------------------------------
@pytest.mark.parametrize("file_type", ["json", "csv"])
def test_a_backup_restored_by_the_service_equals_the_original(shop: LocalBackup, file_type: str) -> None:
    """Back up, wipe the source, restore into the original (upsert) and into a new
    collection: both hold the original's documents (CSV: its cells)."""
    from shared.domain.jobs import JobStatus, RunStatus
    from shared.service.restore.plan import plan_restore, start_restore
    from tests.support.backup import backup_now, drive

    ctx = shop.context(shop.config(shop.wechat_source(file_type=file_type)))
    original = shop.emulator.docs(ENV_ID, "orders")
    backup = backup_now(ctx)
    assert backup.status is RunStatus.SUCCEEDED
    shop.emulator.clear_collection(ENV_ID, "orders")

    def same(docs: list[dict[str, Any]]) -> bool:
        return docs == original if file_type == "json" else docs_as_csv_rows(docs) == docs_as_csv_rows(original)

    for key, mode in (("into-original", "upsert"), ("into-new", "new")):
        plan = plan_restore(ctx, backup.run_id, "shop", "orders", mode=mode)
        run, _ = start_restore(ctx, plan, idempotency_key=key, trigger="test")
        closed = drive(ctx, run)
        (job,) = ctx.state.list_jobs(run.run_id)
        assert job.status is JobStatus.DONE, job.error
        assert closed.status is RunStatus.SUCCEEDED
        assert (job.checkpoint or {}).get("imported") == 40
        assert same(shop.emulator.docs(ENV_ID, plan.order.target)), plan.order.target
    assert shop.emulator.has_collection(ENV_ID, plan.order.target) and plan.order.target != "orders"


def test_an_import_start_whose_answer_was_lost_does_not_fail_a_restore_that_wrote_everything(
        shop: LocalBackup) -> None:
    """WeChat carried the databasemigrateimport out but its answer never came (the
    connection closed). Sending it again on the spot starts a second import whose id is the
    only one kept, and in mode insert that job finds every record already there and rejects
    it: the restore failed, "imported 0 and rejected 40", with all 40 in the collection.
    The part has to be sent again the way a lost import id is (marked resent), so that the
    records the first import wrote are counted as there."""
    from shared.domain.jobs import JobStatus, RunStatus
    from shared.service.restore.plan import plan_restore, start_restore
    from tests.support.backup import backup_now, drive

    ctx = shop.context(shop.config(shop.wechat_source()))
    original = shop.emulator.docs(ENV_ID, "orders")
    backup = backup_now(ctx)
    assert backup.status is RunStatus.SUCCEEDED
    shop.emulator.clear_collection(ENV_ID, "orders")
    shop.emulator.lose_answers(IMPORT)

    plan = plan_restore(ctx, backup.run_id, "shop", "orders", mode="insert")
    run, _ = start_restore(ctx, plan, idempotency_key="lost-answer", trigger="test")
    closed = drive(ctx, run)

    (job,) = ctx.state.list_jobs(run.run_id)
    assert shop.emulator.docs(ENV_ID, "orders") == original
    assert job.status is JobStatus.DONE, job.error
    assert closed.status is RunStatus.SUCCEEDED
