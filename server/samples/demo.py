"""A small inventory module; diffill fills the marked gap."""

import json
from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0


def total_value(items):
    """Return the value of all items in stock."""
    total = 0.0
    for item in items:
        <|fill|>
    return total


def load_items(path):
    with open(path, encoding="utf-8") as f:
        return [Item(**row) for row in json.load(f)]
