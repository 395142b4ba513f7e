"""Builds build/package, what scf-*/serverless.yml deploy to SCF (`src`), and zips it.

- The runtime dependencies are installed as CPython 3.10 manylinux x86_64 wheels,
  whatever Python runs this, pinned by requirements/runtime.lock: the versions
  scripts/setup installs and the tests run with. They are cached
  in build/deps/<hash> so a rebuild after a code change takes seconds.
- Parts the functions never import are left out (see NOT_NEEDED and PRUNE): the zip
  stays small and SCF unpacks it faster.
- Everything is compiled to Python 3.10 bytecode in the package: SCF's code directory is
  read-only, so without it every cold start compiles every imported module again
  (about 2.4x slower imports). Hash-checked .pyc files are used, since zip timestamps
  are too coarse for timestamp-checked ones; our own code is checked against its source
  at import (an edit in the SCF console takes effect), the dependencies are not.
- certifi's CA bundle is also split into `ca-certificates/`, one file per CA named by its
  subject hash (`openssl x509 -subject_hash`), which the functions verify TLS with
  (shared/adapters/tls.py): OpenSSL then reads a CA only when a chain needs it, where
  loading the whole bundle costs 30-50 ms of every cold start. Without an `openssl`
  command here the folder is left out (with a warning) and the functions load the bundle.
- Each handler goes to the package root as `<function>.py` (SCF wants `file.function`
  with no folder in it); your config goes in as backup.yaml.

    scripts/package [--config backup.yaml] [--out build/package]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.config import Destination, DispatchSettings

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
PACKAGE = BUILD / "package"
ARCHIVE = BUILD / "baas-backup.zip"
DEPS_CACHE = BUILD / "deps"
CA_FOLDER = "ca-certificates"  # shared/adapters/tls.py finds it at the package root
HANDLERS = ("trigger", "poller", "finisher")
CAM_POLICY = ROOT / "docs" / "cam-policy.json"
# The one source of the package's versions (and of what scripts/setup installs).
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"

# Published as a source package only; it falls back to pure Python when its C
# extension does not load, so building it here is safe for any target.
SOURCE_ONLY = {"crcmod"}
# Declared dependencies the functions never import, with their own dependencies:
NOT_NEEDED = {
    "greenlet",  # SQLAlchemy's asyncio support only
    "pycryptodome",  # cos-python-sdk-v5's client-side encryption client only (15 MB)
    "anyio",  # httpx's async client only; httpcore skips it when absent
}
# Paths (relative to the package root) left out of the installed dependencies.
PRUNE = (
    "bin",  # console scripts with this machine's interpreter path
    "_yaml", "yaml/_yaml.*.so",  # libyaml binding: yaml.safe_load is pure Python
    "sqlalchemy/cyextension",  # optional speedups; SQLAlchemy falls back to pure Python
    "sqlalchemy/testing",  # SQLAlchemy's own test suite support
    "sqlalchemy/dialects/postgresql", "sqlalchemy/dialects/mssql",
    "sqlalchemy/dialects/oracle",  # state URLs are sqlite:// or mysql+pymysql://
    "*/tests", "*/test",  # libraries' own tests
    "**/*.pyi",  # type stubs
)
PRUNE_VERSION = 3  # bump when NOT_NEEDED, PRUNE or hash_cas change, so cached deps are rebuilt
TARGET = {"python_version": "3.10", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix"}
PY310_EXTENSION = re.compile(r"\.(cpython-310-x86_64-linux-gnu|abi3)\.so$")


def pinned_runtime_closure(lock: Path = RUNTIME_LOCK) -> list[str]:
    """`name==version` for every runtime dependency the functions import, from the runtime
    lock: the versions the tests ran with (scripts/setup installs the same lock). What is
    only there for a NOT_NEEDED package (its `# via` names nothing else) is left out too."""
    pins: dict[str, str] = {}
    needed_by: dict[str, set[str]] = {}
    current = ""
    for line in lock.read_text(encoding="utf-8").splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        via = re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)(\s+\(.*\))?\s*$", line)
        if pin:
            current = _normal(pin.group(1))
            pins[current] = pin.group(2)
            needed_by[current] = set()
        elif via and current:
            needed_by[current].add(_normal(via.group(1)))
    if not pins:
        raise SystemExit(f"{lock} pins nothing; regenerate it (see its first lines)")
    left_out = set(NOT_NEEDED)
    while True:
        orphans = {name for name, users in needed_by.items()
                   if name not in left_out and users and users <= left_out}
        if not orphans:
            break
        left_out |= orphans
    return sorted(f"{name}=={version}" for name, version in pins.items() if name not in left_out)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def find_python310() -> str | None:
    """An interpreter that writes Python 3.10 bytecode (the magic number is per version)."""
    candidates = [sys.executable] if sys.version_info[:2] == (3, 10) else []
    candidates += [shutil.which("python3.10") or ""]
    candidates += sorted(glob.glob(os.path.expanduser(
        os.environ.get("PYENV_ROOT", "~/.pyenv") + "/versions/3.10*/bin/python3.10")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True, check=False)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def isolated_python(python: str) -> str:
    """The interpreter behind `python` if that is a venv's, so `-I` sees no venv packages."""
    probe = subprocess.run([python, "-c", "import sys, os; print(os.path.join(sys.base_prefix, "
                            "'bin', 'python3.10') if sys.prefix != sys.base_prefix else sys.executable)"],
                           capture_output=True, text=True, check=True)
    return probe.stdout.strip()


def compile_tree(python: str, root: Path, paths: Iterable[Path], mode: str) -> None:
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", mode,
                    *(str(p) for p in paths)], check=True, cwd=root, stdout=subprocess.DEVNULL)


def _prune(tree: Path) -> None:
    for pattern in PRUNE:
        for path in tree.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in list(tree.rglob("__pycache__")):
        shutil.rmtree(path)
    for path in tree.rglob("*.so"):
        if not PY310_EXTENSION.search(path.name):  # e.g. crcmod's, built for this machine's Python
            path.unlink()


def dependencies(python310: str | None) -> Path:
    """The installed, pruned (and compiled) dependencies, cached by what goes into them."""
    pins = pinned_runtime_closure()
    openssl = shutil.which("openssl")
    made_with = [pins, PRUNE_VERSION, bool(python310), bool(openssl)]
    key = hashlib.sha256(json.dumps(made_with).encode()).hexdigest()[:16]
    cached = DEPS_CACHE / key
    if (cached / ".complete").exists():
        return cached
    shutil.rmtree(DEPS_CACHE, ignore_errors=True)  # older builds' caches
    BUILD.mkdir(parents=True, exist_ok=True)  # a fresh clone has no build/ yet
    staging = Path(tempfile.mkdtemp(prefix="deps-", dir=BUILD))

    def pip_install(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-compile", "--target", str(staging), *args], check=True)

    wheels = [p for p in pins if p.split("==")[0] not in SOURCE_ONLY]
    pip_install("--platform", "manylinux2014_x86_64", "--implementation", "cp",
                "--python-version", "3.10", "--only-binary=:all:", *wheels)
    pip_install(*(p for p in pins if p.split("==")[0] in SOURCE_ONLY))
    _prune(staging)
    if openssl:
        hash_cas(openssl, staging / "certifi" / "cacert.pem", staging / CA_FOLDER)
    else:
        print(f"warning: no openssl command here to name CA certificates with; the package "
              f"has no {CA_FOLDER}/, so each cold start loads certifi's whole bundle "
              "(30-50 ms more)", file=sys.stderr)
    if python310:
        compile_tree(python310, staging, [Path()], "unchecked-hash")
    (staging / ".complete").write_text("\n".join(pins) + "\n")
    DEPS_CACHE.mkdir(parents=True, exist_ok=True)
    staging.rename(cached)
    return cached


def hash_cas(openssl: str, bundle: Path, folder: Path) -> int:
    """Each certificate of `bundle` (PEM) in a file of its own in `folder`, named
    `<subject hash>.<n>`, n counting certificates whose subjects hash alike: the layout
    OpenSSL looks a CA up in (the CApath of SSL_CTX_load_verify_locations,
    https://docs.openssl.org/3.0/man3/SSL_CTX_load_verify_locations/). Regular files,
    not c_rehash's links: a zip keeps no links. Returns how many certificates."""
    pem = bundle.read_text(encoding="ascii")
    certificates = re.findall(r"-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----\n",
                              pem, re.S)
    if len(certificates) != pem.count("-----BEGIN"):
        raise SystemExit(f"{bundle}: could not split it into its certificates")
    folder.mkdir()
    for certificate in certificates:
        digest = subprocess.run([openssl, "x509", "-noout", "-subject_hash"], input=certificate,
                                capture_output=True, text=True, check=True).stdout.strip()
        if not re.fullmatch(r"[0-9a-f]{8}", digest):
            raise SystemExit(f"{openssl} x509 -subject_hash printed {digest!r}, not a subject hash")
        number = 0
        while (folder / f"{digest}.{number}").exists():
            number += 1
        (folder / f"{digest}.{number}").write_text(certificate, encoding="ascii")
    return len(certificates)


def write_zip(tree: Path, archive: Path) -> None:
    """A reproducible zip: sorted entries, fixed timestamps, so unchanged code zips the same."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zipped:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            name = path.relative_to(tree).as_posix()
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zipped.writestr(info, path.read_bytes(), compresslevel=9)
    partial.replace(archive)


def build(config: Path | None = None, *, out: Path = PACKAGE, archive: Path | None = ARCHIVE) -> Path:
    """Assemble the package in `out` (and zip it to `archive`); returns `out`."""
    python310 = find_python310()
    if python310 is None:
        print("warning: no Python 3.10 here to compile bytecode with; the functions will "
              "compile their imports at every cold start", file=sys.stderr)
    deps = dependencies(python310)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(deps, out, ignore=shutil.ignore_patterns(".complete"))
    shutil.copytree(ROOT / "shared", out / "shared",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in HANDLERS:
        shutil.copy(ROOT / "functions" / name / "index.py", out / f"{name}.py")
    if config:
        shutil.copy(config, out / "backup.yaml")
    if python310:
        compile_tree(python310, out, [Path("shared"), *(Path(f"{n}.py") for n in HANDLERS)],
                     "checked-hash")
    if archive is not None:
        write_zip(out, archive)
    return out


def _unfillable(config: Path, section: str, exc: ValidationError) -> str:
    """Each problem as `destination.bucket: what to do`, as the config's own errors say it."""
    said = "; ".join(f"{'.'.join(map(str, (section, *e['loc'])))}: "
                     f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())
    return f"{config}: cannot fill in the CAM policy: {said}"


def local_state(config: Path) -> str | None:
    """Why `config`'s state cannot work on SCF, or None. Each SCF instance has a /tmp of its
    own, gone with it (cloud.tencent.com/document/product/583/9180): with a SQLite state
    the trigger, the poller and the finisher would each keep their own, and a run would
    start and never move on, with no error anywhere."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    url = str((raw.get("state") or {}).get("url") or "")
    if not url.startswith("sqlite:"):
        return None
    return (f"--config {config}: state.url {url!r} is a SQLite file, which the three functions "
            "cannot share on SCF (each instance has its own /tmp); keep the default cos:// or "
            "use mysql+pymysql://USER:${MYSQL_PASSWORD}@HOST:3306/DB (README: Choosing the "
            "state backend)")


def render_cam_policy(config: Path, *, uin: str | None, region: str | None,
                      environ: Mapping[str, str]) -> dict[str, object]:
    """docs/cam-policy.json with the bucket, prefix and finisher of `config` filled in. The
    finisher's region: `dispatch.region`, else `region` (the functions'), else the bucket's
    (the README has the bucket made in the functions' region)."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    secretless = {k: v for k, v in (raw.get("destination") or {}).items()
                  if k not in ("secret_id", "secret_key")}
    try:
        destination = Destination.model_validate(secretless, context={"environ": environ})
    except ValidationError as exc:
        raise SystemExit(_unfillable(config, "destination", exc)) from None
    try:
        dispatch = DispatchSettings.model_validate(raw.get("dispatch") or {}, context={"environ": environ})
    except ValidationError as exc:
        raise SystemExit(_unfillable(config, "dispatch", exc)) from None
    appid = re.fullmatch(r".+-(\d+)", destination.bucket)
    if appid is None:
        raise SystemExit(f"{config}: destination.bucket {destination.bucket!r} must be named name-APPID")
    values = {"namespace/default/function/baas-backup-finisher":
              f"namespace/{dispatch.namespace}/function/{dispatch.finisher_function}",
              # no prefix: the objects are the bucket's own (<BUCKET>/*, cos:prefix *)
              "<PREFIX>/": f"{destination.prefix}/" if destination.prefix else "",
              "<COS_REGION>": destination.region, "<APPID>": appid.group(1),
              "<BUCKET>": destination.bucket,
              "<REGION>": dispatch.region or region or destination.region}
    if uin:
        values["<UIN>"] = uin
    rendered: dict[str, object] = _filled(json.loads(CAM_POLICY.read_text(encoding="utf-8")), values)
    return rendered


def _filled(node: Any, values: Mapping[str, str]) -> Any:
    """`node` (parsed JSON) with each placeholder in its strings replaced: the values stay
    data, so a `"` or `\\` in one cannot break the document."""
    if isinstance(node, dict):
        return {key: _filled(item, values) for key, item in node.items()}
    if isinstance(node, list):
        return [_filled(item, values) for item in node]
    if isinstance(node, str):  # one pass: a value is never scanned for placeholders
        return re.sub("|".join(map(re.escape, values)), lambda m: values[m.group(0)], node)
    return node


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="config file shipped as backup.yaml")
    parser.add_argument("--out", type=Path, default=PACKAGE, help="package directory (default build/package)")
    parser.add_argument("--uin", help="your account id (UIN), filled into build/cam-policy.json")
    parser.add_argument("--region", default=os.environ.get("REGION"),
                        help="region the functions are deployed in (.env's REGION; default: "
                             "the config's dispatch.region, else destination.region)")
    args = parser.parse_args()
    # scripts/package runs this from the repository root; relative paths are the caller's.
    caller = Path(os.environ.get("BAAS_CALLER_DIR") or Path.cwd())
    args.config = caller / args.config if args.config else None
    args.out = caller / args.out
    if args.config and not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if args.config and (local := local_state(args.config)):
        parser.error(local)
    archive = ARCHIVE if args.out == PACKAGE else args.out.with_suffix(".zip")
    out = build(args.config, out=args.out, archive=archive)
    print(f"{out} ready; {archive}: {archive.stat().st_size / 1e6:.1f} MB zipped")
    if not args.config:
        print("note: no --config given, so no backup.yaml is in the package; the functions "
              "read $BAAS_BACKUP_CONFIG (scf-*/serverless.yml: /var/user/backup.yaml)", file=sys.stderr)
        return 0
    rendered = render_cam_policy(args.config, uin=args.uin, region=args.region, environ=os.environ)
    policy = BUILD / "cam-policy.json"
    policy.write_text(json.dumps(rendered, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{policy}: the CAM policy for the functions' role"
          + ("" if args.uin else " (replace <UIN> with your account id, or pass --uin)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
