"""The sink's resumable multipart primitives (what paged copies build on), through the
real COS SDK against moto."""

from __future__ import annotations

import hashlib

from shared.adapters.cos.objects import CosObjectStore
from shared.config import Destination
from shared.ports import ResumableUploads

MIB = 1 << 20


def test_an_upload_outlives_the_store_that_began_it(destination: Destination) -> None:
    first = CosObjectStore(destination)
    assert isinstance(first, ResumableUploads)
    key = "paged/events.jsonl"
    upload_id = first.begin_upload(key, "application/x-ndjson")
    stale = first.upload_part(key, upload_id, 1, b"a" * (5 * MIB))
    # "Another invocation": a new store, the same upload id; part 1 is sent again.
    second = CosObjectStore(destination)
    assert second.open_uploads(key) == (upload_id,)
    assert second.open_uploads("paged/events") == ()  # exactly the key, not a prefix
    part1 = second.upload_part(key, upload_id, 1, b"b" * (5 * MIB))
    part2 = second.upload_part(key, upload_id, 2, b"tail\n")
    assert part1 != stale
    assert part1.strip('"') == hashlib.md5(b"b" * (5 * MIB)).hexdigest()
    second.complete_upload(key, upload_id, [(1, part1), (2, part2)])
    assert second.read(key) == b"b" * (5 * MIB) + b"tail\n"
    assert second.open_uploads(key) == ()
    second.abort_upload(key, upload_id)  # gone already: fine


def test_abandoned_uploads_are_found_and_aborted(destination: Destination) -> None:
    store = CosObjectStore(destination)
    key = "paged/orders.jsonl"
    ids = {store.begin_upload(key, "application/x-ndjson") for _ in range(3)}
    assert set(store.open_uploads(key)) == ids
    for upload_id in ids:
        store.abort_upload(key, upload_id)
        store.abort_upload(key, upload_id)
    assert store.open_uploads(key) == ()
    assert store.head(key) is None
