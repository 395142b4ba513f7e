"""The SCF package as deployed: built, zipped and unzipped again; a whole backup run
through its three handlers in isolated Python 3.10 processes (only the package and the
standard library on sys.path) with real async dispatch between them; the CAM policy checked against the code. The
deploy files are checked in tests/test_deploy_file.py."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.compare import assert_object_equals_docs
from devkit.emulators.tencentcloud import TencentCloudEmulator
from devkit.sample_data import make_docs
from scripts.build_package import (
    CA_FOLDER,
    HANDLERS,
    PY310_EXTENSION,
    build,
    find_python310,
    isolated_python,
    render_cam_policy,
)
from shared.domain.layout import run_manifest_key
from tests.support.backup import FAST_TIMING, SECRET, LocalBackup

ROOT = Path(__file__).resolve().parent.parent
ROLE = {"TENCENTCLOUD_SECRETID": "AKIDpackage000000000001", "TENCENTCLOUD_SECRETKEY": "pkg-role-key-123456",
        "TENCENTCLOUD_SESSIONTOKEN": "pkg-role-token-654321"}
REGION = "ap-guangzhou"
LIMIT_BYTES = 15_000_000

# Runs in each child: the package and the standard library only; replies are JSON lines
# on the real stdout while the handlers' logs go to stderr.
DRIVER = r"""
import json, sys, sysconfig
package = sys.argv[1]
sys.path[:] = [package] + [p for p in sys.path if p and "site-packages" not in p]
replies, sys.stdout = sys.stdout, sys.stderr
stdlib = tuple(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib"))

def outside():
    return sorted(name for name, module in list(sys.modules.items())
                  if getattr(module, "__file__", None)
                  and not module.__file__.startswith((package, *stdlib)))

def reply(value):
    value["sdk_loaded"] = "tencentcloud.scf.v20180416.scf_client" in sys.modules
    replies.write(json.dumps(value, default=str) + "\n")
    replies.flush()

import trigger, poller, finisher
handlers = {"trigger": trigger, "poller": poller, "finisher": finisher}
reply({"files": {name: module.__file__ for name, module in handlers.items()}, "outside": outside()})
for line in sys.stdin:
    name, event = json.loads(line)
    reply({"result": handlers[name].main_handler(event, None), "outside": outside()})
"""


def python310() -> str:
    found = find_python310()
    if found is None:
        pytest.fail("no Python 3.10 interpreter found: SCF runs 3.10 and the package is built for it")
    return isolated_python(found)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(zip, the zip unpacked like SCF does) built from this working tree."""
    root = tmp_path_factory.mktemp("scf")
    shipped = root / "shipped.yaml"
    shipped.write_text("# the config given to scripts/package\n", encoding="utf-8")
    build(shipped, out=root / "package", archive=root / "baas-backup.zip")
    code = root / "code"
    with zipfile.ZipFile(root / "baas-backup.zip") as archive:
        archive.extractall(code)
    return root / "baas-backup.zip", code


# -- what is in the package -----------------------------------------------------------
def test_zip_is_small_and_holds_the_handlers_and_the_config(built: tuple[Path, Path]) -> None:
    archive, code = built
    assert archive.stat().st_size < LIMIT_BYTES
    for name in HANDLERS:
        tree = ast.parse((code / f"{name}.py").read_text(encoding="utf-8"))
        assert any(isinstance(node, ast.FunctionDef) and node.name == "main_handler" for node in tree.body)
    assert (code / "backup.yaml").read_text(encoding="utf-8").startswith("# the config given")
    assert (code / "shared" / "entrypoints" / "scf.py").is_file()
    assert (code / "shared" / "entrypoints" / "page" / "status.html").is_file()  # package data
    assert not (code / "devkit").exists()  # the emulators are never shipped
    names = {p.name for p in code.iterdir()}
    assert not names & {"tests", "scripts", "functions", "bin", "Crypto", "anyio", "_yaml"}


def test_dependencies_are_cpython_310_manylinux_x86_64(built: tuple[Path, Path]) -> None:
    _, code = built
    extensions = list(code.rglob("*.so"))
    assert any(p.name.startswith("_pydantic_core.cpython-310-x86_64-linux-gnu") for p in extensions)
    assert all(PY310_EXTENSION.search(p.name) for p in extensions), [p.name for p in extensions]
    # the per-product Tencent Cloud SDK packages, not the whole SDK
    assert sorted(p.name for p in (code / "tencentcloud").iterdir() if p.is_dir() and p.name != "__pycache__") == [
        "common", "scf"]
    assert list(code.glob("tencentcloud_sdk_python_scf-*.dist-info"))
    assert not list(code.glob("tencentcloud_sdk_python-*.dist-info"))


def test_bytecode_is_python_310_checked_for_our_code_only(built: tuple[Path, Path]) -> None:
    _, code = built
    magic = subprocess.run([python310(), "-c", "import importlib.util, sys; "
                            "sys.stdout.write(importlib.util.MAGIC_NUMBER.hex())"],
                           capture_output=True, text=True, check=True).stdout
    ours = list((code / "shared").rglob("*.py")) + [code / f"{n}.py" for n in HANDLERS]
    theirs = list((code / "pydantic").rglob("*.py")) + list((code / "tencentcloud").rglob("*.py"))
    for sources, flags in ((ours, 3), (theirs, 1)):  # 3: hash checked at import; 1: unchecked
        for source in sources:
            pyc = Path(importlib.util.cache_from_source(str(source)).replace(
                f".{sys.implementation.cache_tag}.", ".cpython-310."))
            header = pyc.read_bytes()[:8]
            assert header[:4].hex() == magic, pyc
            assert int.from_bytes(header[4:8], "little") == flags, pyc


def test_the_cas_are_in_a_folder_where_openssl_finds_each_by_its_subject_hash(
        built: tuple[Path, Path]) -> None:
    _, code = built
    folder = code / CA_FOLDER
    bundle = (code / "certifi" / "cacert.pem").read_text(encoding="ascii")
    certificates = re.findall(r"-----BEGIN CERTIFICATE-----\n.+?-----END CERTIFICATE-----\n", bundle, re.S)
    files = sorted(folder.iterdir())
    assert len(certificates) > 100
    assert sorted(f.read_text(encoding="ascii") for f in files) == sorted(certificates)
    assert all(re.fullmatch(r"[0-9a-f]{8}\.\d", f.name) for f in files)
    # Each is a root, its own issuer: found only if named by its subject hash (OpenSSL's
    # own stores left out, which hold most of these CAs too)
    openssl = shutil.which("openssl")
    assert openssl, "no openssl command here: scripts/setup installs it (Debian's openssl package)"
    checked = subprocess.run([openssl, "verify", "-no-CAfile", "-no-CApath", "-no-CAstore",
                              "-CApath", str(folder), *map(str, files)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # and the functions' TLS context trusts the folder, not certifi's bundle
    source = subprocess.run([python310(), "-I", "-B", "-c", "import sys; sys.path.insert(0, '.'); "
                             "from shared.adapters import tls; "
                             "print(tls._source(None), tls.tls_context().cert_store_stats())"],
                            cwd=code, env={"PATH": os.environ.get("PATH", "")},  # as on SCF:
                            capture_output=True, text=True, check=True).stdout  # no bundle named
    assert source.strip() == f"{(None, str(folder))} {{'x509': 0, 'crl': 0, 'x509_ca': 0}}"


# -- a whole backup through the package's handlers ------------------------------------
class Instance:
    """One SCF instance of a function: a fresh isolated interpreter over the package."""

    def __init__(self, code: Path, function: str, environ: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [python310(), "-I", "-B", "-c", DRIVER, str(code)], cwd=code, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**environ, "SCF_FUNCTIONNAME": f"baas-backup-{function}"})
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            _, err = self.process.communicate(timeout=30)
            raise AssertionError(f"handler process ended: {err[-3000:]}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, name: str, event: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps([name, event]) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> str:
        _, err = self.process.communicate(timeout=30)
        return err


def timer(name: str) -> dict[str, Any]:
    return {"Type": "Timer", "TriggerName": name, "Time": "2026-11-21T02:00:00Z", "Message": ""}


def test_a_whole_backup_runs_through_the_packaged_handlers(
    built: tuple[Path, Path], local: LocalBackup, tmp_path: Path
) -> None:
    _, code = built
    docs = {"orders": make_docs(150, seed=11), "用户 users": make_docs(20, seed=12, prefix="u")}
    for name, rows in docs.items():
        local.seed(name, rows)
    config = tmp_path / "backup.yaml"
    config.write_text(yaml.safe_dump({
        "destination": local.destination.model_dump(exclude={"secret_id", "secret_key"}),
        "state": {"url": local.state_url},
        "timing": FAST_TIMING,
        "dispatch": {"endpoint": "${TC_API_ENDPOINT}"},  # everything else: the deployed defaults
        "sources": [local.wechat_source(collections=list(docs))],
    }, allow_unicode=True), encoding="utf-8")
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
               "BAAS_BACKUP_CONFIG": str(config), "WECHAT_SECRET": SECRET,
               "TENCENTCLOUD_REGION": REGION, **ROLE}
    finisher_runs: list[dict[str, Any]] = []

    def finisher_instance(event: dict[str, Any]) -> Any:
        instance = Instance(code, "finisher", environ)
        reply = instance.call("finisher", event)
        instance.close()
        finisher_runs.append({**reply, "hello": instance.hello})
        return reply["result"]

    with TencentCloudEmulator() as tencentcloud:
        tencentcloud.add_key(ROLE["TENCENTCLOUD_SECRETID"], ROLE["TENCENTCLOUD_SECRETKEY"],
                             ROLE["TENCENTCLOUD_SESSIONTOKEN"], allow=["default/baas-backup-finisher"])
        tencentcloud.add_function("baas-backup-finisher", finisher_instance)
        environ["TC_API_ENDPOINT"] = tencentcloud.url

        trigger = Instance(code, "trigger", environ)
        started = trigger.call("trigger", timer("nightly"))
        trigger.close()
        run_id = started["result"]["run_id"]
        assert started["result"]["created"] is True

        poller = Instance(code, "poller", environ)
        manifest_key = run_manifest_key(local.destination.prefix, run_id)
        deadline = time.monotonic() + 120
        ticks: list[dict[str, Any]] = []
        while not any(o.key == manifest_key for o in local.objects.list(manifest_key)):
            assert time.monotonic() < deadline, f"run did not finish; poller said {ticks[-3:]}"
            ticks.append(poller.call("poller", timer("every-minute")))
            time.sleep(0.05)
        tencentcloud.wait_idle(60)
        poller_log = poller.close()

    assert trigger.hello["files"] == {n: str(code / f"{n}.py") for n in HANDLERS}
    # nothing came from outside the package and the standard library, before or after running
    for reply in [trigger.hello, started, poller.hello, *ticks,
                  *(r["hello"] for r in finisher_runs), *finisher_runs]:
        assert reply["outside"] == [], reply["outside"]
    # only the poller hands off, so only the poller loads the Tencent Cloud SDK
    assert not started["sdk_loaded"] and ticks[-1]["sdk_loaded"]
    assert not any(r["sdk_loaded"] for r in finisher_runs)
    manifest = json.loads(local.objects.read(manifest_key))
    assert manifest["status"] == "succeeded", manifest
    jobs = {j["collection"]: j for j in manifest["jobs"]}
    for name, rows in docs.items():
        assert_object_equals_docs(local.objects.read(jobs[name]["key"]), rows, "json")
    calls = tencentcloud.invocations
    assert sorted(c.event["job_id"] for c in calls) == sorted(r["result"]["job_id"] for r in finisher_runs)
    assert len(calls) == len(docs) and all(c.invocation_type == "Event" for c in calls)
    assert {r["result"]["outcome"] for r in finisher_runs} == {"done"}
    assert "job handed to the finisher" in poller_log
    for secret in (SECRET, ROLE["TENCENTCLOUD_SECRETKEY"], ROLE["TENCENTCLOUD_SESSIONTOKEN"]):
        assert secret not in poller_log


# -- the CAM policy ------------------------------------------------------------------------
COS_OBJECTS = "qcs::cos:<COS_REGION>:uid/<APPID>:<BUCKET>/<PREFIX>/*"
COS_BUCKET = "qcs::cos:<COS_REGION>:uid/<APPID>:<BUCKET>/*"
FINISHER = "qcs::scf:<REGION>:uin/<UIN>:namespace/default/function/baas-backup-finisher"
# cos-python-sdk-v5 method -> the CAM action it needs
COS_ACTIONS = {
    "put_object": "name/cos:PutObject", "get_object": "name/cos:GetObject",
    "head_object": "name/cos:HeadObject", "delete_object": "name/cos:DeleteObject",
    "create_multipart_upload": "name/cos:InitiateMultipartUpload",
    "upload_part": "name/cos:UploadPart", "list_parts": "name/cos:ListParts",
    "complete_multipart_upload": "name/cos:CompleteMultipartUpload",
    "abort_multipart_upload": "name/cos:AbortMultipartUpload",
    "list_objects": "name/cos:GetBucket", "list_multipart_uploads": "name/cos:ListMultipartUploads",
    "get_bucket_versioning": "name/cos:GetBucketVersioning",  # doctor: does forbid-overwrite hold?
    # retention's move to a cold class copies an object onto itself: PUT Object - Copy needs
    # PutObject on the target (GetObject on the source is granted above)
    "copy_object": "name/cos:PutObject",
}


def policy() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / "docs" / "cam-policy.json").read_text(encoding="utf-8"))
    return document


def grants(document: dict[str, Any]) -> dict[str, set[str]]:
    """resource -> actions allowed on it."""
    found: dict[str, set[str]] = {}
    for statement in document["statement"]:
        assert statement["effect"] == "allow"
        for resource in statement["resource"]:
            found.setdefault(resource, set()).update(statement["action"])
    return found


def test_cam_policy_names_exactly_the_backup_prefix_and_the_finisher() -> None:
    document = policy()
    assert document["version"] == "2.0"
    found = grants(document)
    assert set(found) == {COS_OBJECTS, COS_BUCKET, FINISHER}
    assert found[FINISHER] == {"scf:InvokeFunction"}
    bucket_actions = {"name/cos:GetBucket", "name/cos:ListMultipartUploads",
                      "name/cos:GetBucketVersioning"}
    assert found[COS_BUCKET] == bucket_actions
    assert found[COS_OBJECTS] == set(COS_ACTIONS.values()) - bucket_actions
    listing = [s for s in document["statement"] if s["action"] == ["name/cos:GetBucket"]]
    assert listing and listing[0]["condition"] == {"string_like": {"cos:prefix": "<PREFIX>/*"}}
    assert not any("*" in action for actions in found.values() for action in actions)


def cos_calls() -> set[str]:
    """COS SDK methods the functions' code calls (on anything named like a client)."""
    called = set()
    for path in (ROOT / "shared").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and "client" in ast.unparse(node.func.value).lower()):
                called.add(node.func.attr)
    return called


def test_cam_policy_covers_every_cos_call_in_the_code() -> None:
    from qcloud_cos import CosS3Client

    cos_methods = {name for name in dir(CosS3Client) if not name.startswith("_")}
    used = cos_calls() & cos_methods
    assert {"put_object", "upload_part", "list_multipart_uploads"} <= used
    unmapped = used - set(COS_ACTIONS)
    assert not unmapped, f"map these COS calls to CAM actions and grant them in docs/cam-policy.json: {unmapped}"
    allowed = set().union(*grants(policy()).values())
    assert {COS_ACTIONS[m] for m in used} <= allowed


def test_cam_policy_without_a_region_or_a_prefix_takes_the_buckets(tmp_path: Path) -> None:
    """`scripts/package --config backup.yaml --uin ...` as the README has it: no --region
    (.env's REGION is not read there), so the finisher is in the bucket's region; and an
    empty prefix grants the bucket's objects, no placeholder left."""
    config = tmp_path / "backup.yaml"
    config.write_text(yaml.safe_dump({
        "destination": {"bucket": "mybackups-1250000000", "region": "ap-shanghai", "prefix": ""},
        "sources": [],
    }), encoding="utf-8")
    rendered = render_cam_policy(config, uin="100000000001", region=None, environ={})
    assert set(grants(rendered)) == {
        "qcs::cos:ap-shanghai:uid/1250000000:mybackups-1250000000/*",
        "qcs::scf:ap-shanghai:uin/100000000001:namespace/default/function/baas-backup-finisher",
    }
    assert "<" not in json.dumps(rendered)
    assert '"cos:prefix": "*"' in json.dumps(rendered)


def test_cam_policy_is_rendered_from_a_config(tmp_path: Path) -> None:
    config = tmp_path / "backup.yaml"
    config.write_text(yaml.safe_dump({
        "destination": {"bucket": "mybackups-1250000000", "region": "ap-shanghai", "prefix": "/nightly/"},
        "dispatch": {"finisher_function": "${FN}"},
        "sources": [],
    }), encoding="utf-8")
    rendered = render_cam_policy(config, uin="100000000001", region="ap-guangzhou", environ={"FN": "prod-finisher"})
    assert set(grants(rendered)) == {
        "qcs::cos:ap-shanghai:uid/1250000000:mybackups-1250000000/nightly/*",
        "qcs::cos:ap-shanghai:uid/1250000000:mybackups-1250000000/*",
        "qcs::scf:ap-guangzhou:uin/100000000001:namespace/default/function/prod-finisher",
    }
    assert "<" not in json.dumps(rendered)
    with pytest.raises(SystemExit, match=r"destination\.bucket"):
        config.write_text(yaml.safe_dump({"destination": {"bucket": "no-appid", "region": "ap-shanghai"}}))
        render_cam_policy(config, uin="100000000001", region="ap-guangzhou", environ={})


def test_cam_policy_keeps_quotes_and_backslashes_of_a_prefix_as_text(tmp_path: Path) -> None:
    """The policy is JSON data: a prefix with `"` or `\\` is a string in it, not broken JSON."""
    config = tmp_path / "backup.yaml"
    config.write_text(yaml.safe_dump({
        "destination": {"bucket": "mybackups-1250000000", "region": "ap-shanghai", "prefix": 'say "hi"\\now'},
        "sources": [],
    }), encoding="utf-8")
    rendered = render_cam_policy(config, uin="100000000001", region=None, environ={})
    assert 'qcs::cos:ap-shanghai:uid/1250000000:mybackups-1250000000/say "hi"\\now/*' in grants(rendered)
    conditions = [s["condition"]["string_like"]["cos:prefix"] for s in rendered["statement"]  # type: ignore[attr-defined]
                  if "condition" in s]
    assert conditions == ['say "hi"\\now/*']


@pytest.mark.parametrize("prefix", ["nightly*", "*", "night?y", "${WILD}"])
def test_cam_policy_refuses_a_prefix_that_would_widen_the_grant(tmp_path: Path, prefix: str) -> None:
    """CAM reads `*` (and `?` in string_like) as wildcards: `backups*` would grant
    `backups-of-others/...` too, so such a prefix is refused, naming the field."""
    config = tmp_path / "backup.yaml"
    config.write_text(yaml.safe_dump({
        "destination": {"bucket": "mybackups-1250000000", "region": "ap-shanghai", "prefix": prefix},
        "sources": [],
    }), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"destination\.prefix: .*wildcard"):
        render_cam_policy(config, uin="100000000001", region=None, environ={"WILD": "a*b"})


def test_a_relative_config_is_read_from_where_scripts_package_was_run(tmp_path: Path) -> None:
    """scripts/package works from the repository root (its setup moves there), yet a
    relative `--config` names the caller's file, not a file of that name in the repository."""
    ran = subprocess.run(["bash", str(ROOT / "scripts" / "package"), "--config", "mine-not-here.yaml"],
                         check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ran.returncode != 0
    assert f"--config {tmp_path / 'mine-not-here.yaml'}: no such file" in ran.stderr, ran.stderr


def test_a_config_with_a_sqlite_state_is_refused_before_packaging(tmp_path: Path) -> None:
    """The functions could not share a SQLite file on SCF: packaging such a config stops,
    saying what to use, rather than deploying functions whose runs never move on."""
    config = tmp_path / "backup.yaml"
    config.write_text("state:\n  url: sqlite:///tmp/state.db\n", encoding="utf-8")
    ran = subprocess.run(["bash", str(ROOT / "scripts" / "package"), "--config", "backup.yaml"],
                         check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ran.returncode != 0
    assert "state.url 'sqlite:///tmp/state.db' is a SQLite file" in ran.stderr, ran.stderr
    assert "keep the default cos://" in ran.stderr
