"""The demo project `aesemo stack` makes in Label Studio, the first time only: three annotators,
the backend connected, sample photographs imported and pre-annotated. Each step checks Label
Studio first, so a second run adds nothing twice."""
from __future__ import annotations

import importlib.util
import json
import re
import secrets
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from model.files import write_text_atomically

from backend.core.settings import load_settings
from backend.labelstudio.admin_client import LabelStudioClient, LabelStudioError
from backend.labelstudio.label_config import SUGGESTION_FIELD
from backend.serving.suggestions import UNTRAINED_SUFFIX
from backend.tools.processes import StackError, say

if TYPE_CHECKING:
    from backend.tools.stack import StackOptions

ADMIN_EMAIL = "admin@example.com"
ANNOTATORS = 3
PROJECT_TITLE = "Aesthetics and emotion (demo)"
# shipped in the package (label_config/aesthetic_emotion.xml, its documented place, links to it)
LABEL_CONFIG = resources.files("backend.labelstudio") / "aesthetic_emotion.xml"
# real photographs inside scikit-image's wheel (skimage/data), read from the installed package
# Label Studio Community settings that keep each vote independent, as far as Community allows
# (docs/operators/demo-stack.md): the labelling stream ("Label All Tasks") shows an annotator only their own
# annotation, never their earlier versions; no empty annotation counts as a vote; the instructions,
# shown before the first task, ask them to label from the stream rather than open the task list,
# where Community shows everyone's labels to every member. Predictions are not shown to annotators
# (Label Studio would pre-select the suggested choices, and the key of a pre-selected choice
# un-selects it): the suggestion is the line of text the label config shows above the choices,
# and Label Studio still keeps the predictions' scores for its "Least certain first" ordering.
INDEPENDENT_VOTES = {
    "show_annotation_history": False,
    "enable_empty_annotation": False,
    "show_collab_predictions": False,
    "show_skip_button": True,
    "show_instruction": True,
    "expert_instruction": (
        "<p>Label each photo with your own judgement: open tasks with <b>Label All Tasks</b>, not from "
        "the task list (it shows the other annotators' labels). The grey line above the choices may "
        "show the model's suggestion with its confidence; nothing is selected for you. Keys: <b>q</b> "
        "high, <b>w</b> low; <b>1</b>-<b>8</b> the emotion; <b>Ctrl+Enter</b> submits.</p>"),
}
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg", "retina.jpg", "camera.png", "coins.png", "moon.png", "grass.png",
                 "brick.png")


def load_or_create_state(options: StackOptions) -> dict:
    """Logins and the project id of earlier runs; new passwords and token the first time."""
    if options.state_path.exists():
        return json.loads(options.state_path.read_text())
    if (options.ls_data_dir / "label_studio.sqlite3").exists():
        raise StackError(f"{options.ls_data_dir} holds a Label Studio database but {options.state_path} "
                         f"(its admin login) is missing: restore it, or delete {options.ls_data_dir} to start afresh")
    state = {
        "admin": {"email": ADMIN_EMAIL, "password": secrets.token_urlsafe(12), "token": secrets.token_hex(20)},
        "annotators": [{"email": f"annotator{i}@example.com", "password": secrets.token_urlsafe(12)}
                       for i in range(1, ANNOTATORS + 1)],
        "project_id": None,
    }
    save_state(options, state)
    return state


def save_state(options: StackOptions, state: dict) -> None:
    """Written aside and renamed, readable by its owner only (it holds passwords)."""
    write_text_atomically(options.state_path, json.dumps(state, indent=2))


def prepare_demo(client: LabelStudioClient, options: StackOptions, state: dict) -> None:
    """Each step checks Label Studio first, so a second run adds nothing twice."""
    project_id = ensure_project(client, options, state)
    ensure_annotators(client, options, state)
    ensure_backend_connected(client, project_id, options.backend_url)
    import_missing_photos(client, project_id, sample_photos())
    pre_annotate(client, project_id)


def ensure_project(client: LabelStudioClient, options: StackOptions, state: dict) -> int:
    project_id = state.get("project_id")
    if project_id is not None:
        try:
            client.update_project(project_id, **INDEPENDENT_VOTES)
            show_the_suggestion_line(client, project_id)
            say(f"reusing project {project_id}")
            return project_id
        except LabelStudioError as exc:
            if exc.status != 404:
                raise
            say(f"project {project_id} is gone from Label Studio: making a new one")
    project = client.create_project(PROJECT_TITLE, LABEL_CONFIG.read_text(),
                                    description="Sample photographs pre-annotated by aesemo; 3 annotators each",
                                    maximum_annotations=ANNOTATORS, overlap_cohort_percentage=100,
                                    **INDEPENDENT_VOTES)
    state["project_id"] = project["id"]
    save_state(options, state)
    say(f"created project {project['id']} (every photo needs {ANNOTATORS} annotators)")
    return project["id"]


def show_the_suggestion_line(client: LabelStudioClient, project_id: int) -> None:
    """A demo project made before the label config showed the model's suggestion gets the shipped
    config: its annotators are not shown predictions, so without the line they would see none.
    Label Studio keeps the annotations (the controls are the same)."""
    if f'value="${SUGGESTION_FIELD}"' in (client.project(project_id).get("label_config") or ""):
        return
    client.update_project(project_id, label_config=LABEL_CONFIG.read_text())
    say(f"project {project_id}: label config updated to show the model's suggestion above the choices")


def ensure_annotators(client: LabelStudioClient, options: StackOptions, state: dict) -> None:
    """Through the signup form (the REST API cannot set a password); they join the organization."""
    existing = {user["email"] for user in client.users()}
    for annotator in state["annotators"]:
        if annotator["email"] in existing:
            continue
        annotator["token"] = client.signup_user(annotator["email"], annotator["password"])
        save_state(options, state)
        say(f"signed up {annotator['email']}")


def ensure_backend_connected(client: LabelStudioClient, project_id: int, url: str) -> None:
    """Connect the backend at `url`; a connection to another address (an earlier run's
    --backend-port) is removed first, with the webhook Label Studio made for it."""
    backends = client.ml_backends(project_id)
    if any(b["url"].rstrip("/") == url for b in backends):
        return
    for stale in backends:
        client.disconnect_ml_backend(stale["id"])
        for hook in client.webhooks(project_id):
            if hook["url"] == f"{stale['url'].rstrip('/')}/webhook":
                client.delete_webhook(hook["id"])
    settings = load_settings()
    basic_auth = (settings.basic_auth_user, settings.basic_auth_pass or "") if settings.basic_auth_user else None
    client.connect_ml_backend(project_id, url, basic_auth=basic_auth)
    say(f"connected the backend {url} to project {project_id}")


def sample_photos() -> list[Path]:
    """The photographs in the installed scikit-image package (no download)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise StackError("scikit-image is not installed (it ships the sample photos): "
                         "pip install -e '.[demo]', or run scripts/setup.sh")
    folder = Path(spec.origin).parent / "data"
    missing = [name for name in SAMPLE_PHOTOS if not (folder / name).is_file()]
    if missing:
        raise StackError(f"{folder} lacks {', '.join(missing)}")
    return [folder / name for name in SAMPLE_PHOTOS]


def uploaded_name(task: dict) -> str:
    """`/data/upload/1/ca16892c-astronaut.png` -> `astronaut.png` (LS prefixes 8 hex digits)."""
    name = str(task.get("data", {}).get("image", "")).rsplit("/", 1)[-1]
    return re.sub(r"^[0-9a-f]{8}-", "", name)


def import_missing_photos(client: LabelStudioClient, project_id: int, photos: list[Path]) -> None:
    present = {uploaded_name(task) for task in client.tasks(project_id)}
    missing = [photo for photo in photos if photo.name not in present]
    if missing:
        client.import_files(project_id, missing)
        # tasks get the project's overlap when it is set after they exist (Label Studio protocol notes, section 9)
        client.update_project(project_id, maximum_annotations=ANNOTATORS, overlap_cohort_percentage=100)
        say(f"imported {len(missing)} sample photographs")


def pre_annotate(client: LabelStudioClient, project_id: int, attempts: int = 3) -> None:
    """Data Manager's "Retrieve Predictions" for every task: Label Studio asks the backend only for
    tasks without a prediction of its current model version. Tasks left without one are asked for
    again (Label Studio gives up on a /predict after 100 s and does not retry by itself). Nothing is
    asked while the backend serves an untrained version: it would answer no suggestions."""
    untrained = untrained_version(client, project_id)
    if untrained:
        say(f"no suggestions yet: the backend serves {untrained}, never trained on labels, and sends none "
            f"from it (random suggestions would steer the annotators); suggestions start after the first "
            f"training: label {load_settings().min_training_labels} photos, then Start Training (Label "
            f"Studio's model settings or the backend's admin page)")
        return
    say("asking the backend for suggestions on the photos that have none (its first request loads the model)")
    client.retrieve_predictions(project_id)
    for attempt in range(2, attempts + 1):
        todo = [task["id"] for task in client.tasks(project_id) if not task.get("total_predictions")]
        if not todo:
            break
        say(f"{len(todo)} photos have no suggestion yet: asking again (try {attempt} of {attempts})")
        client.retrieve_predictions(project_id, todo)
    tasks = client.tasks(project_id)
    done = sum(1 for task in tasks if task.get("total_predictions"))
    say(f"{done} of {len(tasks)} photos carry the backend's suggestions")


def untrained_version(client: LabelStudioClient, project_id: int) -> str | None:
    """The untrained version the project's backend serves and withholds suggestions from, None
    when it serves a trained one or sends them anyway: Label Studio's backend record holds the
    version name of the backend's last /setup answer, which says `-untrained` for such a version."""
    if load_settings().suggest_untrained:
        return None
    names = [b.get("model_version") or "" for b in client.ml_backends(project_id)]
    return next((name for name in names if name.endswith(UNTRAINED_SUFFIX)), None)
