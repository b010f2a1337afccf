"""Build label maps that cannot be shipped: AudioSet class -> top-level ontology category.

    semcal labelmap audioset --ontology PATH/ontology.json [--output FILE.json]

The map has every class twice, by display name and by machine id (/m/...), so it applies
to either kind of label column.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from semcal import files
from semcal.config import UserError

DEFAULT_OUTPUT = "runs/audioset_top_category.json"


def build_audioset_map(ontology: list[dict]) -> dict[str, str]:
    """Each ontology node (by name and by id) mapped to the name of its top-level category.

    A node under several top-level categories goes to the first in the ontology's order.
    """
    by_id = {node["id"]: node for node in ontology}
    children = {child for node in ontology for child in node.get("child_ids", [])}
    tops = [node["id"] for node in ontology if node["id"] not in children]
    category: dict[str, str] = {}
    for top in tops:  # in ontology order, so the first category to reach a node keeps it
        stack, seen = [top], set()
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id not in by_id:
                continue
            seen.add(node_id)
            category.setdefault(node_id, by_id[top]["name"])
            stack.extend(by_id[node_id].get("child_ids", []))
    mapping = {}
    for node_id, top_name in category.items():
        mapping[by_id[node_id]["name"]] = top_name
        mapping[node_id] = top_name
    return mapping


def read_ontology(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"ontology file {path} does not exist (AudioSet's ontology.json is expected).")
    try:
        ontology = files.read_json(path)
    except ValueError as err:
        raise UserError(f"could not parse {path} as JSON: {err}") from None
    if not isinstance(ontology, list) or not all(isinstance(n, dict) and "id" in n and "name" in n for n in ontology):
        raise UserError(f"{path} is not an AudioSet ontology: expected a list of nodes with id, name and child_ids.")
    return ontology


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="semcal labelmap", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["audioset"], help="which map to build")
    parser.add_argument("--ontology", required=True, help="path to AudioSet's ontology.json")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"JSON file to write (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(list(argv))
    mapping = build_audioset_map(read_ontology(args.ontology))
    files.write_json(args.output, mapping)
    print(
        f"labelmap: {len(mapping) // 2} AudioSet classes -> {len(set(mapping.values()))} categories, written to {args.output}"
    )
    return 0
