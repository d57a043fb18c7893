"""What the plan counts of the data: each target's train and test images, read from disk
where the data is here, else assumed (the plan says so)."""

from __future__ import annotations

from typing import Any

# MVTec AD's 3,629 train and 1,725 test images over 15 categories: the assumption when a
# category's data is not on this machine (the plan says so).
ASSUMED_TRAIN, ASSUMED_TEST = 242, 115


def count_images(dataset: str, root: str, category: str, options: dict[str, Any]
                 ) -> tuple[int, int, bool]:
    """(train, test) image counts of a category, and whether they were read from disk."""
    from pgray.data.registry import get_layout
    from pgray.errors import DatasetError

    layout = get_layout(dataset)
    try:
        return (len(layout.discover(root, category, "train", options)),
                len(layout.discover(root, category, "test", options)), True)
    except DatasetError:
        return ASSUMED_TRAIN, ASSUMED_TEST, False


def plan_targets(entries) -> list[tuple[Any, str]]:
    """(entry, category) for every category an entry asks for: those under the root, or for
    `all` with nothing there, the layout's known categories (their sizes are then assumed)."""
    from pgray.data.registry import get_layout
    from pgray.errors import DatasetError
    from pgray.pipelines.components.targets import categories_of

    out = []
    for entry in entries:
        try:
            cats = categories_of(entry)
        except DatasetError:
            layout = get_layout(entry.dataset)
            cats = list(layout.categories) if entry.categories == "all" else list(entry.categories)
        out += [(entry, c) for c in cats]
    return out


def here_root(entry) -> str:
    """The entry's dataset as a folder on this machine where it is here, else its root as
    given (the plan then assumes its sizes)."""
    from pgray.data.dataset import resolve_root
    from pgray.errors import DatasetError
    from pgray.pipelines.components.targets import entry_data

    try:
        return str(resolve_root(entry_data(entry)))
    except DatasetError:
        return entry.root
