"""A complete backup on the local default: the WeChat emulator serving a sample
environment, moto's S3 server standing in for COS, SQLite state. Runs the same CLI a
user runs, then reads back what landed in the bucket and checks it against the source,
verifies the run, empties a collection and restores it from the backup (checking it
equals the original), and ends with `doctor` (the local fake of the Tencent Cloud API
holds the finisher)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from devkit.compare import assert_object_equals_docs
from devkit.emulators.minapp import MinAppEmulator, render_export
from devkit.emulators.onedb import OneDBEmulator
from devkit.emulators.tencentcloud import TencentCloudEmulator
from devkit.emulators.wechat import WeChatEmulator
from devkit.s3_server import create_bucket, start_s3_server, stop_s3_server
from devkit.sample_data import make_docs
from shared.adapters.cos.objects import CosObjectStore
from shared.config import load_config
from shared.entrypoints.cli import INTERRUPTED, console
from shared.entrypoints.cli import main as cli
from shared.entrypoints.scf import handle_finisher

ROOT = Path(__file__).resolve().parent.parent
APPID = "wx5eed0000deadbeef"
SECRET = "demo-app-secret-0000"  # the emulator's; real secrets live in environment variables
ENV_ID = "demo-shop-7f3a"
BUCKET = "demo-backups-1250000000"

COLLECTIONS: dict[str, list[dict[str, Any]]] = {
    "orders": make_docs(5000, seed=11, prefix="order"),
    "users": make_docs(800, seed=12, prefix="user"),
    "商品 products": make_docs(120, seed=13, prefix="sku"),
    "audit_log": [],
}

# MinApp: a table over the (demo-sized) per-export row limit is exported in parts.
MINAPP_CLIENT_ID = "demo5eed0000minapp01"
MINAPP_SECRET = "demo-minapp-client-secret-0000"  # the emulator's
MINAPP_MAX_ROWS = 2000  # MinApp's real limit is 1,000,000 rows per export
MINAPP_WINDOW = 1  # seconds between two exports of a table (MinApp's real window: a minute)
MINAPP_TABLES: dict[int, list[dict[str, Any]]] = {
    1001: [{k: v for k, v in d.items() if k != "_id"} for d in make_docs(5000, seed=21, prefix="o")],
    1002: [{k: v for k, v in d.items() if k != "_id"} for d in make_docs(300, seed=22, prefix="m")],
}


def _minapp_source(minapp_url: str) -> dict[str, Any]:
    return {"type": "minapp", "name": "app", "client_id": MINAPP_CLIENT_ID,
            "client_secret": "${DEMO_MINAPP_SECRET}", "file_type": "json",
            "tables": [{"id": 1001, "split": {"key": "created_at", "rows_per_part": 1500}}, 1002],
            "max_export_rows": MINAPP_MAX_ROWS, "api_base": minapp_url,
            "export_interval_seconds": MINAPP_WINDOW}


# OneDB: no export job; the finisher pages through each table (5000 rows a call).
ONEDB_ENV, ONEDB_KEY_ID, ONEDB_APP = "demo-onedb-env", "demo-onedb-key", "user"
ONEDB_SECRET = "demo-onedb-key-secret-0000"  # the emulator's
ONEDB_EVENTS = 120_000  # generated rows: several parts and pages


def _onedb_emulator() -> OneDBEmulator:
    onedb = OneDBEmulator()
    onedb.add_key(ONEDB_ENV, ONEDB_KEY_ID, ONEDB_SECRET)
    onedb.add_generated_table(ONEDB_ENV, ONEDB_APP, "events", ONEDB_EVENTS)
    posts = [{"ids": {"userId": f"用户{n % 7}", "postId": n},  # composite primary key
              "columns": {k: v for k, v in d.items() if k != "_id"}}
             for n, d in enumerate(make_docs(400, seed=31, prefix="p"))]
    onedb.add_table(ONEDB_ENV, ONEDB_APP, "posts", ["userId", "postId"], posts)
    onedb.add_table(ONEDB_ENV, ONEDB_APP, "empty", ["id"], [])
    return onedb


def _add_onedb_source(config_path: Path, onedb_url: str) -> None:
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["sources"].append({
        "type": "onedb", "name": "crm", "region": "cn-east-1", "envid": ONEDB_ENV,
        "keyid": ONEDB_KEY_ID, "key_secret": "${DEMO_ONEDB_SECRET}", "app_id": ONEDB_APP,
        "keys": ["userId", "seq"],
        "tables": ["events", {"name": "posts", "keys": ["userId", "postId"]},
                   {"name": "empty", "keys": ["id"]}],
        "api_base": onedb_url})
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                           encoding="utf-8")


def _onedb_equal(store: CosObjectStore, manifest: dict[str, Any], onedb: OneDBEmulator) -> bool:
    """Every row, in key order, once: the object's lines against the table."""
    lines = store.read(manifest["object_key"]).decode("utf-8").splitlines()
    rows = list(onedb.rows(ONEDB_ENV, ONEDB_APP, manifest["collection"]))
    return [json.loads(line) for line in lines] == rows


# The local fake of the Tencent Cloud API, holding the finisher function, and a role's
# temporary keys it accepts: what `doctor` checks the hand-off to the finisher against.
ROLE = {"TENCENTCLOUD_SECRETID": "AKIDdemo00000000000000001",
        "TENCENTCLOUD_SECRETKEY": "demo-role-secret-key-0000",
        "TENCENTCLOUD_SESSIONTOKEN": "demo-role-session-token-0000"}
FINISHER = "baas-backup-finisher"


def _tencent_cloud() -> TencentCloudEmulator:
    cloud = TencentCloudEmulator()
    cloud.add_key(ROLE["TENCENTCLOUD_SECRETID"], ROLE["TENCENTCLOUD_SECRETKEY"],
                  ROLE["TENCENTCLOUD_SESSIONTOKEN"], allow=[f"default/{FINISHER}"])
    cloud.add_function(FINISHER, handle_finisher)
    cloud.start()
    return cloud


def _write_config(folder: Path, wechat_url: str, s3_url: str, minapp_url: str,
                  cloud_url: str) -> Path:
    config = {
        "destination": {"bucket": BUCKET, "region": "ap-guangzhou", "prefix": "baas-backup",
                        "endpoint": s3_url, "anonymous": True},
        "state": {"url": f"sqlite:///{folder / 'state.sqlite3'}"},
        "timing": {"first_check_seconds": 0.5, "max_check_interval_seconds": 2},
        # `run` copies in-process here (no SCF); `doctor` checks the finisher through the fake
        "dispatch": {"endpoint": cloud_url, "region": "ap-guangzhou"},
        "sources": [
            {"type": "wechat", "name": "shop", "appid": APPID, "secret": "${DEMO_WECHAT_SECRET}",
             "env": ENV_ID, "collections": ["orders", "users", "商品 products", "audit_log"],
             "file_type": "json", "api_base": wechat_url},
            {"type": "wechat", "name": "shop-csv", "appid": APPID,
             "secret": "${DEMO_WECHAT_SECRET}", "env": ENV_ID, "collections": ["orders"],
             "file_type": "csv", "api_base": wechat_url},
            _minapp_source(minapp_url),
        ],
    }
    path = folder / "backup.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _show_bucket(config_path: Path, emulator: WeChatEmulator, minapp: MinAppEmulator,
                 onedb: OneDBEmulator) -> bool:
    config = load_config(config_path)
    store = CosObjectStore(config.destination)
    table = Table(title=f"what landed in bucket {BUCKET}")
    for column in ("source", "collection", "records", "bytes", "sha256", "object key", "equals source"):
        table.add_column(column, overflow="fold")
    all_equal = True
    manifests = [o for o in store.list(config.destination.prefix) if o.key.endswith(".manifest.json")]
    for info in sorted(manifests, key=lambda o: o.key):
        manifest = json.loads(store.read(info.key))
        if manifest["platform"] == "minapp":
            equal = _minapp_equal(store, manifest, minapp)
        elif manifest["platform"] == "onedb":
            equal = _onedb_equal(store, manifest, onedb)
        else:
            data = store.read(manifest["object_key"])
            equal = _equals_source(data, emulator.docs(ENV_ID, manifest["collection"]),
                                   manifest["file_type"])
        all_equal &= equal
        table.add_row(manifest["source"], manifest["collection"], str(manifest["records"]),
                      str(manifest["bytes"]), manifest["sha256"],
                      manifest["object_key"] + _more_parts(manifest), "yes" if equal else "NO")
    console().print(table)
    return all_equal and bool(manifests)


def _more_parts(manifest: dict[str, Any]) -> str:
    extra = len(manifest.get("objects") or []) - 1
    return f" (+ {extra} more parts)" if extra > 0 else ""


def _minapp_equal(store: CosObjectStore, manifest: dict[str, Any], minapp: MinAppEmulator) -> bool:
    """Each stored part is byte for byte MinApp's export of its slice of the table."""
    records, start = minapp.records(manifest["collection"]), 0
    for part in manifest["objects"]:
        piece = records[start:start + part["records"]]
        if store.read(part["key"]) != render_export(piece, manifest["file_type"]):
            return False
        start += part["records"]
    return start == len(records)


class Stopped(Exception):
    """Ctrl-C stopped a step (the CLI caught it and said what it left): the demo ends
    there, as a shell script stops at a command Ctrl-C ended, not in the next step."""


def _step(step: str, *argv: str) -> int:
    """One CLI command of the demo; Stopped (naming `step`) when Ctrl-C ended it."""
    code = cli(list(argv))
    if code == INTERRUPTED:
        raise Stopped(step)
    return code


def _restore_round_trip(config_path: Path, emulator: WeChatEmulator) -> bool:
    """An accident and its repair: the `users` collection is emptied, then restored from
    the run just made into the emptied collection (mode new takes an empty one), and
    compared with the original document for document."""
    from shared.bootstrap import build_context
    from shared.service.verify import latest_run

    run_id = latest_run(build_context(load_config(config_path)))
    emulator.clear_collection(ENV_ID, "users")
    print(f"\n(the users collection was emptied by accident: {len(emulator.docs(ENV_ID, 'users'))} "
          "documents left)")
    print(f"$ baas-backup restore {run_id} shop users --into users")
    code = _step("the restore", "--config", str(config_path), "restore", run_id, "shop", "users",
                 "--into", "users", "--tick", "0.3")
    same = emulator.docs(ENV_ID, "users") == COLLECTIONS["users"]
    print(f"users after the restore: {len(emulator.docs(ENV_ID, 'users'))} documents, "
          + ("equal to the original" if same else "NOT equal to the original"))
    return code == 0 and same


def _equals_source(data: bytes, docs: list[dict[str, Any]], file_type: str) -> bool:
    try:
        assert_object_equals_docs(data, docs, file_type)
    except AssertionError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=str(ROOT / ".demo"), help="where state and config go")
    args = parser.parse_args()
    try:
        return _demo(Path(args.workdir))
    except Stopped as exc:
        during = f" during {exc}"
    except KeyboardInterrupt:  # between two CLI commands
        during = ""
    print(f"demo: stopped by Ctrl-C{during}; the steps after it were not run",
          file=sys.stderr, flush=True)
    return INTERRUPTED


def _demo(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.sqlite3").unlink(missing_ok=True)

    s3, s3_url = start_s3_server()
    try:  # the servers stop however the demo ends (Ctrl-C included)
        return _steps(folder, s3_url)
    finally:
        stop_s3_server(s3)


def _steps(folder: Path, s3_url: str) -> int:
    create_bucket(s3_url, BUCKET)
    # One export per table per second instead of MinApp's per minute, so parts start quickly.
    minapp = MinAppEmulator(job_window=MINAPP_WINDOW, max_export_rows=MINAPP_MAX_ROWS)
    minapp.add_client(MINAPP_CLIENT_ID, MINAPP_SECRET)
    for table_id, records in MINAPP_TABLES.items():
        minapp.add_table(table_id, records)
    with WeChatEmulator(polls_until_ready=2) as emulator, minapp, _onedb_emulator() as onedb:
        emulator.add_app(APPID, SECRET)
        emulator.add_env(APPID, ENV_ID)
        for name, docs in COLLECTIONS.items():
            emulator.add_collection(ENV_ID, name, docs)
        cloud = _tencent_cloud()
        try:
            return _shown(folder, s3_url, emulator, minapp, onedb, cloud)
        finally:
            cloud.stop()


def _shown(folder: Path, s3_url: str, emulator: WeChatEmulator, minapp: MinAppEmulator,
           onedb: OneDBEmulator, cloud: TencentCloudEmulator) -> int:
    """Each step of the demo, with what it shows; Stopped when Ctrl-C ended one."""
    config_path = _write_config(folder, emulator.base_url, s3_url, minapp.base_url, cloud.url)
    _add_onedb_source(config_path, onedb.base_url)
    os.environ["DEMO_ONEDB_SECRET"] = ONEDB_SECRET
    os.environ["DEMO_WECHAT_SECRET"] = SECRET
    os.environ["DEMO_MINAPP_SECRET"] = MINAPP_SECRET
    print(f"WeChat emulator at {emulator.base_url}, S3 server at {s3_url}")
    print(f"MinApp emulator at {minapp.base_url} (table 1001 is over its {MINAPP_MAX_ROWS}-row "
          "export limit: split into parts)")
    print(f"OneDB emulator at {onedb.base_url} (tables paged by the finisher, "
          f"{ONEDB_EVENTS} rows in events)")
    print(f"config: {config_path}\n")
    code = _step("the backup", "--config", str(config_path), "run", "--tick", "0.3")
    print()
    equal = _show_bucket(config_path, emulator, minapp, onedb)
    _step("status", "--config", str(config_path), "status")
    print("every object equals its source collection" if equal else "MISMATCH: see the table")
    print("\n$ baas-backup verify latest")
    verified = _step("the verify", "--config", str(config_path), "verify", "latest")
    restored = _restore_round_trip(config_path, emulator)
    print("\n$ baas-backup doctor")
    os.environ.update(ROLE)
    # The finisher function's environment: on SCF it finds its package's backup.yaml.
    os.environ["BAAS_BACKUP_CONFIG"] = str(config_path)
    checked = _step("the doctor", "--config", str(config_path), "doctor")
    return 0 if code == 0 and equal and verified == 0 and restored and checked == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
