"""Sample documents for the demo and the tests: Chinese text, emoji, nested objects,
arrays, numbers, booleans and nulls, deterministic for a given seed."""

from __future__ import annotations

import random
from typing import Any

_NAMES = ["张伟", "王芳", "李娜", "Zoë", "O'Brien", "刘洋 \"小刘\"", "陈静,北京", "🐼 熊猫"]
_ITEMS = ["奶茶", "coffee ☕", "包子", "cake 🍰", "面条\n(大碗)", "tea, green"]


def make_docs(count: int, seed: int = 7, prefix: str = "doc") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for index in range(count):
        docs.append({
            "_id": f"{prefix}-{index:07d}",
            "name": rng.choice(_NAMES),
            "total": round(rng.uniform(0, 999), 2),
            "paid": rng.random() < 0.7,
            "note": None if index % 5 else "备注: 请尽快发货 🚚",
            "items": [{"sku": rng.choice(_ITEMS), "qty": rng.randint(1, 5)}
                      for _ in range(rng.randint(0, 3))],
            "address": {"city": rng.choice(["上海", "深圳", "Paris"]), "geo": [121.47, 31.23]},
        })
    return docs
