"""Label maps: fine labels to coarse ones, read from JSON and applied to label columns.

Maps ship in label_maps/ (by name) or are any JSON file of fine label -> coarse label.
One that cannot be shipped is built here: AudioSet class -> top-level ontology category,

    semcal labelmap audioset --ontology PATH/ontology.json [--output FILE.json]

which has every class twice, by display name and by machine id (/m/...), so it applies
to either kind of label column.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semcal.core.errors import UserError
from semcal.store import files

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = "runs/audioset_top_category.json"
LABEL_MAPS_DIR = Path(__file__).resolve().parents[2] / "label_maps"  # semcal/store/ -> the repository


def load_label_map(name_or_path: str) -> dict[str, str]:
    """A fine-to-coarse label map from a JSON file, or by the name of one in label_maps/."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        path = LABEL_MAPS_DIR / f"{name_or_path}.json"
    if not path.exists():
        shipped = sorted(p.stem for p in LABEL_MAPS_DIR.glob("*.json"))
        raise UserError(f"label map {name_or_path!r} not found: give a JSON file path or one of {shipped}.")
    try:
        mapping = files.read_json(path)
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        raise UserError(f"could not parse label map {path}: {err}") from None
    if not isinstance(mapping, dict):
        raise UserError(f"label map {path} must be a JSON object from fine label to coarse label.")
    return {str(k): str(v) for k, v in mapping.items()}


def apply_label_map(labels: np.ndarray, mapping: dict[str, str]) -> np.ndarray:
    """Each label mapped; labels missing from the map are an error that names them."""
    unmapped = sorted({label for label in labels if label not in mapping})
    if unmapped:
        shown = ", ".join(map(repr, unmapped[:20])) + (" ..." if len(unmapped) > 20 else "")
        raise UserError(
            f"{len(unmapped)} labels are not in the label map: {shown}. Add them to the map or clear label_map."
        )
    return np.array([mapping[label] for label in labels], dtype=object)


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
    parser = argparse.ArgumentParser(
        prog="semcal labelmap", description="Build a label map: AudioSet class -> top-level ontology category."
    )
    parser.add_argument("kind", choices=["audioset"], help="which map to build")
    parser.add_argument("--ontology", required=True, help="path to AudioSet's ontology.json")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"JSON file to write (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(list(argv))
    mapping = build_audioset_map(read_ontology(args.ontology))
    files.write_json(args.output, mapping)
    log.info(
        "labelmap: %d AudioSet classes -> %d categories, written to %s",
        len(mapping) // 2,
        len(set(mapping.values())),
        args.output,
    )
    return 0
