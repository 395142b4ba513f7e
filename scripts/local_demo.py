"""A complete backup on the local default: the WeChat emulator serving a sample
environment, moto's S3 server standing in for COS, SQLite state. Runs the same CLI a
user runs, then reads back what landed in the bucket and checks it against the source."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from scripts.compare import assert_object_equals_docs
from scripts.emulators.wechat import WeChatEmulator
from scripts.s3_server import create_bucket, start_s3_server, stop_s3_server
from scripts.sample_data import make_docs
from shared.cli import console
from shared.cli import main as cli
from shared.config import load_config
from shared.sink import CosObjectStore

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


def _write_config(folder: Path, wechat_url: str, s3_url: str) -> Path:
    config = {
        "destination": {"bucket": BUCKET, "region": "ap-guangzhou", "prefix": "baas-backup",
                        "endpoint": s3_url, "anonymous": True},
        "state": {"url": f"sqlite:///{folder / 'state.sqlite3'}"},
        "timing": {"first_check_seconds": 0.5, "max_check_interval_seconds": 2},
        "sources": [
            {"type": "wechat", "name": "shop", "appid": APPID, "secret": "${DEMO_WECHAT_SECRET}",
             "env": ENV_ID, "collections": ["orders", "users", "商品 products", "audit_log"],
             "file_type": "json", "api_base": wechat_url},
            {"type": "wechat", "name": "shop-csv", "appid": APPID,
             "secret": "${DEMO_WECHAT_SECRET}", "env": ENV_ID, "collections": ["orders"],
             "file_type": "csv", "api_base": wechat_url},
        ],
    }
    path = folder / "backup.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _show_bucket(config_path: Path, emulator: WeChatEmulator) -> bool:
    config = load_config(config_path)
    store = CosObjectStore(config.destination)
    table = Table(title=f"what landed in bucket {BUCKET}")
    for column in ("source", "collection", "records", "bytes", "sha256", "object key", "equals source"):
        table.add_column(column, overflow="fold")
    all_equal = True
    manifests = [o for o in store.list(config.destination.prefix) if o.key.endswith(".manifest.json")]
    for info in sorted(manifests, key=lambda o: o.key):
        manifest = json.loads(store.read(info.key))
        data = store.read(manifest["object_key"])
        equal = _equals_source(data, emulator.docs(ENV_ID, manifest["collection"]),
                               manifest["file_type"])
        all_equal &= equal
        table.add_row(manifest["source"], manifest["collection"], str(manifest["records"]),
                      str(manifest["bytes"]), manifest["sha256"],
                      manifest["object_key"], "yes" if equal else "NO")
    console().print(table)
    return all_equal and bool(manifests)


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
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.sqlite3").unlink(missing_ok=True)

    s3, s3_url = start_s3_server()
    create_bucket(s3_url, BUCKET)
    with WeChatEmulator(polls_until_ready=2) as emulator:
        emulator.add_app(APPID, SECRET)
        emulator.add_env(APPID, ENV_ID)
        for name, docs in COLLECTIONS.items():
            emulator.add_collection(ENV_ID, name, docs)
        config_path = _write_config(folder, emulator.base_url, s3_url)
        os.environ["DEMO_WECHAT_SECRET"] = SECRET
        print(f"WeChat emulator at {emulator.base_url}, S3 server at {s3_url}")
        print(f"config: {config_path}\n")
        code = cli(["--config", str(config_path), "run", "--tick", "0.3"])
        print()
        equal = _show_bucket(config_path, emulator)
        cli(["--config", str(config_path), "status"])
    stop_s3_server(s3)
    print("every object equals its source collection" if equal else "MISMATCH: see the table")
    return 0 if code == 0 and equal else 1


if __name__ == "__main__":
    sys.exit(main())
