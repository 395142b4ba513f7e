"""Putting a backup back into MinApp (知晓云): the restore side of `MinAppClient`.

A table is named by its id (digits, what a backup's collection is) or by its name
(MinApp's names start with a letter, so the two never meet). The import
(seeds/minapp-table-export-import.zh.txt, 数据导入) takes one CSV or JSON file per call as
multipart/form-data and answers 201 once its task exists; the task runs later and its
result is e-mailed (导入或导出操作并非实时, ifanrx/hydrogen-sdk-doc
dashboard/basic-services/schema.md): there is no import id and no status to ask, so the
service counts the table's records before and after.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from shared.adapters.http import describe_transport_error
from shared.domain.errors import Fatal, RateLimited, Retryable
from shared.platforms.minapp.answers import error_text, json_object
from shared.ports import ImportProgress, RestoreMode, TokenCache

if TYPE_CHECKING:
    from shared.platforms.minapp.settings import MinAppSource

log = logging.getLogger(__name__)

T = TypeVar("T")

TABLES = "/oserve/v1.8/table/"  # list (?name= exact) and create: open-api/data/table.md
TABLE = "/oserve/v1.8/table/{table}/"  # detail: open-api/data/table.md 获取数据表详情
IMPORT = "/oserve/v1/table/{table}/import/"  # seeds/minapp-table-export-import.zh.txt 数据导入
ENV_HEADER = "X-Hydrogen-Env-ID"

# MinApp's import documents no conflict mode (the seed's 数据导入 lists one parameter,
# `file`), so nothing can be updated in place: no upsert.
RESTORE_MODES = frozenset({"new", "insert"})

# A table name: a letter, then letters, digits and _, at most 32 (table.md 创建数据表).
TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
# Fields MinApp adds to every table itself (table.md: "id、created_by、created_at、
# updated_at 为自动添加的内置字段"); names starting with _ are its own too (列名称不允许以
# 下划线开头, dashboard/basic-services/schema.md). A create call never carries them.
BUILTIN_FIELDS = frozenset({"id", "created_by", "created_at", "updated_at"})
# The column attributes table.md's create call documents (数据表列的元信息).
FIELD_KEYS = ("name", "type", "items", "format", "description", "constraints", "default", "acl",
              "coordinate_type", "schema_id")
# The export writes JSON Lines or CSV, and the import takes CSV or JSON "(格式请于帮助中心
# 查看)": the file goes back under the extension the export gave it.
EXTENSIONS = {"json": "json", "csv": "csv"}
PART_TYPES = {"json": "application/json", "csv": "text/csv"}
# How long an import's refused token is remembered: the next try (a finisher's retry,
# minutes later) must find it, to sign in once and not again and again.
REFUSED_TOKEN_MEMORY = timedelta(hours=1)


def is_table_id(collection: str) -> bool:
    """ASCII digits only: str.isdigit alone takes "²", which is no table id."""
    return collection.isascii() and collection.isdigit()


def restore_table_name(original: str, run_id: str) -> str:
    """A name MinApp takes (TABLE_NAME) for a restore of table `original` (its name) from
    run `run_id` (20261121T020000123Z-1a2b3c4d -> orders_r20261121T020000)."""
    stamp = re.sub(r"[^A-Za-z0-9]", "", run_id)[:15] or "restore"
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", original).strip("_") or "table"
    if not stem[0].isalpha():
        stem = f"t{stem}"
    return f"{stem[:32 - len(stamp) - 2]}_r{stamp}"


def upload_name(name: str, file_type: str) -> str:
    """The file name sent with an import: `name`'s stem in plain ASCII, with the extension
    of the format (.json for JSON Lines, .csv): the import takes no file_type parameter,
    so the name is what can tell it (our reading of the seed's 数据导入)."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".jsonl", ".json", ".csv"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "backup"
    return f"{stem[:100]}.{EXTENSIONS[file_type]}"


class MultipartFile:
    """A multipart/form-data body of one file field, streamed from `chunks`: its length
    is known before a byte is read, so it goes with a Content-Length, never chunked."""

    def __init__(self, field: str, filename: str, content_type: str,
                 chunks: Iterable[bytes], size: int) -> None:
        self.boundary = f"baas-backup-{secrets.token_hex(16)}"
        self.head = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                     f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = size
        self.sent = 0  # file bytes handed to the connection so far
        self._chunks = chunks

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for chunk in self._chunks:
            if not chunk:
                continue
            if self.sent + len(chunk) > self.size:
                raise Fatal(f"the backup file is longer than its manifest's {self.size} bytes; "
                            "verify the backup")
            self.sent += len(chunk)
            yield chunk
        if self.sent != self.size:
            raise Retryable(f"the backup file ended after {self.sent} of {self.size} bytes")
        yield self.tail


class MinAppRestore:
    """The RestorablePlatform/FileImportPlatform methods; MinAppClient supplies the rest."""

    source: MinAppSource
    _http: httpx.Client
    _cache: TokenCache
    _token_key: str

    if TYPE_CHECKING:
        def _api(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                 json_body: dict[str, Any] | None = None) -> httpx.Response: ...

        def _retrying(self, call: Callable[[], T]) -> T: ...

        def _get(self, path: str, params: dict[str, Any] | None, purpose: str) -> httpx.Response: ...

        def _token(self, avoid: str | None = None) -> str: ...

        def _table_id(self, name: str) -> str: ...

        def _count(self, collection: str, where: dict[str, Any]) -> int: ...

        def _listed_tables(self, answer: dict[str, Any]) -> list[dict[str, Any]]: ...

        def _read(self, path: str, params: dict[str, Any], purpose: str) -> dict[str, Any]: ...

    @property
    def restore_modes(self) -> frozenset[str]:
        return RESTORE_MODES

    # the target table -------------------------------------------------------------
    def default_target(self, collection: str, run_id: str) -> str:
        """Not in the port: a new table's name for restoring `collection` (a table id or
        name) from run `run_id`, made from the original's name, since MinApp names start
        with a letter (table.md 创建数据表) and a backup's collection is a table id."""
        name = collection
        if is_table_id(collection):
            detail = self._detail(collection)
            assert detail is not None
            name = str(detail.get("name") or f"table{collection}")
        return restore_table_name(name, run_id)

    def target_name_rule(self, name: str) -> str | None:
        """A table id, or a name MinApp takes for a new table (TABLE_NAME, table.md 创建数据表)."""
        if is_table_id(name) or TABLE_NAME.fullmatch(name):
            return None
        return ("a MinApp table is named by its id (digits) or by a name that starts with a "
                "letter and holds only letters, digits and _ (at most 32)")

    def target_exists(self, collection: str) -> bool:
        """A table id: its detail answers (404: no). A name: the table list's exact
        `?name=` match finds it (table.md 获取数据表列表)."""
        if is_table_id(collection):
            return self._detail(collection, missing_ok=True) is not None
        return bool(self._named(collection))

    def count(self, collection: str) -> int:
        """Records the table holds (record API, meta.total_count)."""
        return self._count(self._resolve(collection), {})

    def create_target(self, collection: str, like: str) -> None:
        """Create table `collection` with the columns and permissions of `like` (table.md
        创建数据表: name, schema, row_read_perm, row_write_perm, write_perm, all required).
        A table of that name left by an earlier try of this call (empty, same columns) is
        taken as made; any other is refused."""
        if not TABLE_NAME.fullmatch(collection):
            raise Fatal(f"MinApp cannot name a table {collection!r}: a table name starts with a "
                        "letter and holds only letters, digits and _ (at most 32); choose "
                        "another name for the restore's target")
        original = self._detail(self._resolve(like))
        assert original is not None
        body = {"name": collection, "schema": {"fields": self._columns(original, like)},
                **self._permissions(original, like)}
        response = self._retrying(lambda: self._api("POST", TABLES, json_body=body))
        if response.status_code in (200, 201):
            made = json_object(response).get("id")
            log.info("MinApp table created for the restore",
                     extra={"collection": collection, "table_id": made, "like": like})
            return
        said = error_text(response)
        where = f"MinApp refused to create table {collection!r} (HTTP {response.status_code}: {said})"
        if response.status_code == 400 and self._left_by_us(collection, body):
            log.info("MinApp table already made by an earlier try; using it",
                     extra={"collection": collection})
            return
        if response.status_code == 400:
            raise Fatal(f"{where}: a table of that name exists already or MinApp refused the "
                        f"columns copied from {like}; choose another target name")
        raise self._refused(where, response.status_code, "create tables")

    def _left_by_us(self, name: str, body: dict[str, Any]) -> bool:
        found = self._named(name)
        if len(found) != 1:
            return False
        columns = {str(f.get("name")) for f in _fields(found[0])} - BUILTIN_FIELDS
        wanted = {f["name"] for f in body["schema"]["fields"]}
        return columns == wanted and self._count(str(found[0]["id"]), {}) == 0

    def _columns(self, table: dict[str, Any], like: str) -> list[dict[str, Any]]:
        fields = _fields(table)
        if not fields and not isinstance((table.get("schema") or {}).get("fields"), list):
            raise Fatal(f"MinApp's table detail of {like} has no schema.fields; this product "
                        "does not recognise its shape, so it cannot copy the columns")
        return [{k: f[k] for k in FIELD_KEYS if k in f} for f in fields
                if f.get("name") not in BUILTIN_FIELDS and not str(f.get("name")).startswith("_")]

    @staticmethod
    def _permissions(table: dict[str, Any], like: str) -> dict[str, list[str]]:
        rows = table.get("default_row_perm")
        found = {"write_perm": table.get("write_perm"),
                 "row_read_perm": rows.get("_read_perm") if isinstance(rows, dict) else None,
                 "row_write_perm": rows.get("_write_perm") if isinstance(rows, dict) else None}
        perms: dict[str, list[str]] = {}
        for key, value in found.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise Fatal(f"MinApp's table detail of {like} has no usable {key} (write_perm, "
                            "default_row_perm._read_perm/_write_perm); this product does not "
                            "recognise its shape, so it cannot copy the permissions")
            perms[key] = [str(v) for v in value]
        return perms

    # the import -------------------------------------------------------------------
    def send_import(self, collection: str, mode: RestoreMode, *, file_type: str, name: str,
                    chunks: Iterable[bytes], size: int) -> str | None:
        """POST the file to the table's import (multipart/form-data, field `file`), streamed
        from `chunks` with a Content-Length. None: MinApp gives no import id; the result is
        e-mailed to the client's owner and the records appear when its task has run. An
        empty file holds no record and is not sent. Not idempotent: each call is one more
        import task."""
        if mode not in RESTORE_MODES:
            raise Fatal(f"MinApp's import cannot {mode}: it has no conflict mode, so it can "
                        "only add records (modes new and insert)")
        if file_type not in EXTENSIONS:
            raise Fatal(f"MinApp imports CSV or JSON files, not {file_type!r}")
        table = self._resolve(collection)
        filename = upload_name(name, file_type)
        if size == 0:
            log.info("empty backup file: nothing to import", extra={"collection": table,
                                                                    "file": filename})
            return None
        # The body can be read once only, so no call below may send it twice: the table's
        # detail first proves the table there and the token good (renewed once if refused).
        self._detail(table)
        body = MultipartFile("file", filename, PART_TYPES[file_type], chunks, size)
        path = IMPORT.format(table=table)
        headers = {"Authorization": f"Bearer {self._token()}",
                   "Content-Type": body.content_type, "Content-Length": str(body.length)}
        if self.source.env_id:
            headers[ENV_HEADER] = self.source.env_id
        try:
            response = self._http.request("POST", f"{self.source.api_base}{path}", content=body,
                                          headers=headers)
        except httpx.TransportError as exc:
            raise Retryable(f"MinApp import of {filename} into table {table}: "
                            f"{describe_transport_error(exc)} after {body.sent} of {size} "
                            "bytes") from None
        where = (f"MinApp refused the import of {filename} into table {table} "
                 f"(HTTP {response.status_code}: {error_text(response)})")
        if response.status_code in (200, 201):
            self._cache.cache_delete(self._refused_key(table))
            log.info("MinApp accepted the import; it runs as a task and e-mails its result",
                     extra={"collection": table, "file": filename, "bytes": size})
            return None
        if response.status_code >= 500:
            raise Retryable(where)
        if response.status_code == 400:
            raise Fatal(f"{where}: MinApp takes it as an invalid file (无效的文件). The file is "
                        f"the backup's {file_type.upper()} as MinApp exported it; check that the "
                        "backup verifies and that the table's columns match its fields")
        if response.status_code == 401:
            self._cache.cache_delete(self._token_key)
            if self._first_token_refusal(table):
                raise Retryable(f"{where}: the token was dropped; the next try signs in again "
                                "and sends the file again")
        raise self._refused(where, response.status_code, "import data")

    def _first_token_refusal(self, table: str) -> bool:
        """A token refused (401) on the import, e.g. one that ran out while the file went
        up: the first such refusal is tried again with a new sign-in (the body cannot be
        sent twice within this call, so by the next try); a fresh token refused too fails
        (README, Sign-in: "fetched again once when MinApp answers 401")."""
        key = self._refused_key(table)
        if self._cache.cache_get(key, datetime.now(timezone.utc)) is not None:
            self._cache.cache_delete(key)
            return False
        self._cache.cache_put(key, "1", datetime.now(timezone.utc) + REFUSED_TOKEN_MEMORY)
        return True

    def _refused_key(self, table: str) -> str:
        return f"minapp:import-401:{self.source.client_id}:{self.source.env_id or ''}:{table}"

    def check_import(self, collection: str, import_id: str) -> ImportProgress:
        """Never called: send_import gives no id, since MinApp reports imports by e-mail."""
        raise Fatal(f"MinApp reports imports by e-mail only; there is no import {import_id!r} "
                    f"of table {collection} to check (count the table's records instead)")

    # helpers ----------------------------------------------------------------------
    def _resolve(self, collection: str) -> str:
        return collection if is_table_id(collection) else self._table_id(collection)

    def _named(self, name: str) -> list[dict[str, Any]]:
        answer = self._read(TABLES, {"name": name}, f"find table {name!r}")
        return [t for t in self._listed_tables(answer) if t.get("name") == name]

    def _detail(self, table: str, missing_ok: bool = False) -> dict[str, Any] | None:
        response = self._get(TABLE.format(table=table), None, f"read table {table}")
        if response.status_code == 200:
            return json_object(response)
        if response.status_code == 404 and missing_ok:
            return None
        where = (f"MinApp refused to read table {table} (HTTP {response.status_code}: "
                 f"{error_text(response)})")
        if response.status_code == 404:
            env = f" in test environment {self.source.env_id!r}" if self.source.env_id else ""
            raise Fatal(f"{where}: no table {table}{env}; check the table id")
        raise self._refused(where, response.status_code, "read tables")

    def _refused(self, where: str, status: int, what: str) -> Exception:
        client = self.source.client_id
        if status == 401:
            return Fatal(f"{where}: a freshly issued token was refused; check that the client "
                         f"{client!r} may use the OpenAPI")
        if status == 403:
            return Fatal(f"{where}: the client {client!r} may not {what}; grant it data access "
                         "in the MinApp console")
        if status == 429:
            return RateLimited(f"{where}: rate limited")
        return Fatal(f"{where}: not a known answer")


def _fields(table: dict[str, Any]) -> list[dict[str, Any]]:
    schema = table.get("schema")
    fields = schema.get("fields") if isinstance(schema, dict) else None
    if not isinstance(fields, list):
        return []
    return [f for f in fields if isinstance(f, dict) and isinstance(f.get("name"), str)]
