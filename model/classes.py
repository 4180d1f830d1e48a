"""The two tasks and their default class lists (the patent's; a project's label config may differ)."""

TASKS = ("aesthetic", "emotion")

DEFAULT_CLASSES = {
    "aesthetic": ("high", "low"),
    "emotion": ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"),
}


def check_classes(classes: dict) -> dict[str, tuple[str, ...]]:
    """Validate a {task: [class, ...]} mapping: both tasks, at least two distinct names each."""
    checked = {}
    for task in TASKS:
        names = tuple(classes.get(task) or ())
        if len(names) < 2:
            raise ValueError(f"{task} needs at least 2 classes, got {list(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"{task} class names repeat: {list(names)}")
        checked[task] = names
    return checked
