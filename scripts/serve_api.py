"""The status page and HTTP API on the local default, with nothing to set up: the WeChat
emulator serving a small sample environment (one export fails, so the page has a
failure to show), moto's S3 server standing in for COS, SQLite state, two backups
already done, and `baas-backup serve` until Ctrl-C.

    .venv/bin/python -m scripts.serve_api [--port 8080]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

import yaml

from devkit.emulators.wechat import WeChatEmulator
from devkit.s3_server import create_bucket, start_s3_server, stop_s3_server
from devkit.sample_data import make_docs
from shared.config import load_config
from shared.entrypoints.cli import INTERRUPTED, tcp_port
from shared.entrypoints.cli import main as cli
from shared.entrypoints.http_api import TOKEN_ENV
from shared.entrypoints.local_server import serve

ROOT = Path(__file__).resolve().parent.parent
APPID = "wx5eed0000deadbeef"
SECRET = "demo-app-secret-0000"  # the emulator's; real secrets live in environment variables
ENV_ID = "demo-shop-7f3a"
BUCKET = "demo-backups-1250000000"


def _write_config(folder: Path, wechat_url: str, s3_url: str) -> Path:
    source = {"type": "wechat", "appid": APPID, "secret": "${DEMO_WECHAT_SECRET}", "env": ENV_ID,
              "api_base": wechat_url}
    config = {
        "destination": {"bucket": BUCKET, "region": "ap-guangzhou", "prefix": "baas-backup",
                        "endpoint": s3_url, "anonymous": True},
        "state": {"url": f"sqlite:///{folder / 'state.sqlite3'}"},
        "timing": {"first_check_seconds": 0.5, "max_check_interval_seconds": 2, "max_attempts": 2},
        "sources": [
            {**source, "name": "shop", "collections": ["orders", "users", "商品 products"]},
            {**source, "name": "shop-csv", "collections": ["orders"], "file_type": "csv"},
        ],
    }
    path = folder / "backup.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=tcp_port, default=8080,  # as `baas-backup serve` takes it
                        help="TCP port, 1-65535, or 0 for any free one (default 8080)")
    parser.add_argument("--workdir", default=str(ROOT / ".demo" / "api"), help="where state and config go")
    args = parser.parse_args()
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.sqlite3").unlink(missing_ok=True)
    os.environ["DEMO_WECHAT_SECRET"] = SECRET
    generated = not os.environ.get(TOKEN_ENV)
    if generated:  # a throwaway token for this loopback demo; a real one is never printed
        os.environ[TOKEN_ENV] = secrets.token_urlsafe(24)

    try:
        return _demo(folder, args.port, generated)
    except KeyboardInterrupt:  # Ctrl-C while it sets up: nothing of it is worth keeping
        print("serve_api: interrupted before serving; nothing is kept (each start begins "
              "afresh)", file=sys.stderr, flush=True)
        return INTERRUPTED


def _demo(folder: Path, port: int, generated: bool) -> int:
    """The sample environment, two backups, then `serve` until Ctrl-C."""
    s3, s3_url = start_s3_server()
    create_bucket(s3_url, BUCKET)
    try:
        with WeChatEmulator(polls_until_ready=2) as emulator:
            emulator.add_app(APPID, SECRET)
            emulator.add_env(APPID, ENV_ID)
            emulator.add_collection(ENV_ID, "orders", make_docs(3000, seed=11, prefix="order"))
            emulator.add_collection(ENV_ID, "users", make_docs(400, seed=12, prefix="user"))
            emulator.add_collection(ENV_ID, "商品 products", make_docs(120, seed=13, prefix="sku"))
            config_path = _write_config(folder, emulator.base_url, s3_url)
            print("two backups first, so the page has something to show:")
            if cli(["--config", str(config_path), "run", "--tick", "0.3"]) == INTERRUPTED:
                return INTERRUPTED  # Ctrl-C: the CLI said so; stop here, serving nothing
            emulator.fail_export(ENV_ID, "users", "demo: this collection's export fails")
            if cli(["--config", str(config_path), "run", "--tick", "0.3"]) == INTERRUPTED:
                return INTERRUPTED
            emulator.clear_faults()
            # the link is printed once the port is bound: with --port 0 only then is it known
            if generated:
                print("\nopen the link below (demo token, this session only)")
            else:
                print(f"\nopen the address below and enter the value of {TOKEN_ENV}")
            fragment = f"#token={os.environ[TOKEN_ENV]}" if generated else ""
            return serve(load_config(config_path), str(config_path), "127.0.0.1", port, 1.0,
                         fragment=fragment)
    finally:
        stop_s3_server(s3)


if __name__ == "__main__":
    sys.exit(main())
