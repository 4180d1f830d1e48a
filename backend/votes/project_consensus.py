"""Consensus of one project: its policy, votes in from events, summaries, and snapshots of the
training set."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import redis

from backend.core import keys
from model.files import write_text_atomically

from backend.votes.anchoring import anchoring
from backend.votes.consensus import STATES, Policy, TaskConsensus, compute, summary
from backend.core.errors import InvalidInput
from backend.labelstudio.label_config import ProjectLabels
from backend.votes.shown import shown_for, shown_for_tasks, shown_of_vote
from backend.votes.store import DIMENSIONS, Vote, VoteStore, vote_from_annotation

log = logging.getLogger(__name__)


class ProjectConsensus:
    def __init__(self, client: redis.Redis, settings, on_auto_train=None):
        self.redis = client
        self.settings = settings
        self.votes = VoteStore(client)
        # called with the project id when the auto-training threshold is crossed
        self.on_auto_train = on_auto_train

    # -- policy
    def policy(self, project: str) -> Policy:
        stored = self.redis.get(keys.policy(project))
        base = {"min_annotators": self.settings.consensus_min_annotators,
                "min_agreement": self.settings.consensus_min_agreement,
                "method": self.settings.consensus_method,
                "rubber_stamp_seconds": self.settings.rubber_stamp_seconds}
        try:
            return Policy(**{**base, **(json.loads(stored) if stored else {})})
        except (TypeError, ValueError) as exc:  # stored before its bounds existed: every read would fail
            log.warning("project %s: stored consensus policy ignored (%s); using the defaults", project, exc)
            return Policy(**base)

    def set_policy(self, project: str, changes: dict) -> Policy:
        if not isinstance(changes, dict):
            raise InvalidInput("policy must be a JSON object")
        unknown = set(changes) - set(Policy.__dataclass_fields__)
        if unknown:
            raise InvalidInput(f"unknown policy fields {sorted(unknown)}; known: {sorted(Policy.__dataclass_fields__)}")
        try:
            policy = Policy(**{**self.policy(project).to_dict(), **changes})
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"bad policy: {exc}") from None
        self.redis.set(keys.policy(project), json.dumps(policy.to_dict()))
        return policy

    # -- events
    def apply_annotation(self, project: str, labels: ProjectLabels, annotation: dict, task: dict | None) -> str:
        vote, image = vote_and_image(labels, annotation, task)
        vote = replace(vote, shown=shown_of_vote(vote.parent_prediction, shown_for(self.redis, project, vote.task)))
        # newly agreed labels are counted only for auto-training: with it off, the webhook
        # skips judging the task before and after (most of its Redis round trips and CPU)
        track = self.tracks_agreement()
        before = self._agreed_dimensions(project, labels, vote.task) if track else set()
        outcome = self.votes.apply(project, vote, image)
        if track and outcome in ("added", "changed"):
            self._count_agreed(project, labels, vote.task, before)
        return outcome

    def with_what_was_shown(self, project: str, votes: list[Vote], settled: set[int]) -> list[Vote]:
        """Votes of Label Studio's export, each with what its annotator was shown: a vote whose
        export held its pre-fill (its annotation id in `settled`) keeps that; else what was
        recorded when the vote arrived, if it did; else what the task shows now
        (backend/votes/shown.py)."""
        open_votes = [v for v in votes if v.annotation not in settled]
        if not open_votes:
            return votes
        stored = self.redis.hmget(keys.votes(project), [v.annotation for v in open_votes])
        recorded = {v.annotation: Vote.from_record(r).shown for v, r in zip(open_votes, stored) if r}
        remembered = shown_for_tasks(self.redis, project, {v.task for v in open_votes if v.annotation not in recorded})
        return [v if v.annotation in settled else
                replace(v, shown=recorded[v.annotation] if v.annotation in recorded
                        else shown_of_vote(v.parent_prediction, remembered.get(v.task)))
                for v in votes]

    def tracks_agreement(self) -> bool:
        """Whether each vote is judged before and after (to count labels for auto-training)."""
        return self.settings.auto_train_threshold > 0

    def delete_annotations(self, project: str, labels: ProjectLabels | None, ids: list[int]) -> int:
        seen = 0
        for annotation in ids:
            task = None
            if labels is not None and self.settings.auto_train_threshold > 0:
                stored = self.redis.hget(keys.votes(project), annotation)
                task = Vote.from_record(stored).task if stored else None
            before = self._agreed_dimensions(project, labels, task) if task is not None else set()
            if self.votes.delete(project, annotation) is not None:
                seen += 1
            if task is not None:
                self._count_agreed(project, labels, task, before)
        return seen

    def _agreed_dimensions(self, project: str, labels: ProjectLabels, task: int) -> set[str]:
        votes = self.votes.task_votes(project, task)
        # per event, only this task's votes are at hand: judge it by majority vote
        result = compute(votes, _classes(labels), replace(self.policy(project), method="majority"))
        return {d for d in DIMENSIONS if task in result[d] and result[d][task].state == "agreed"}

    def _count_agreed(self, project: str, labels: ProjectLabels, task: int, before: set[str]) -> None:
        after = self._agreed_dimensions(project, labels, task)
        if _crossed_threshold(self.redis, project, len(after - before), self.settings.auto_train_threshold) \
                and self.on_auto_train is not None:
            self.on_auto_train(project)

    # -- reading
    def consensus(self, project: str, labels: ProjectLabels,
                  votes: list[Vote] | None = None) -> dict[str, dict[int, TaskConsensus]]:
        """`votes`: the project's, read already (all_votes)."""
        votes = votes if votes is not None else self.votes.all_votes(project)
        return compute(votes, _classes(labels), self.policy(project), tasks=list(self.votes.image_urls(project)))

    def anchoring(self, project: str, labels: ProjectLabels, votes: list[Vote], result: dict,
                  model_on_control: dict[int, dict]) -> dict:
        """The suggestions' measured pull (backend/votes/anchoring.py), from the votes and their consensus."""
        return anchoring(votes, result, _classes(labels), self.settings.control_fraction, model_on_control,
                         self.policy(project).rubber_stamp_seconds)

    def summary(self, project: str, labels: ProjectLabels, result: dict | None = None) -> dict:
        """`result`: a consensus computed already (the admin page shows it twice over)."""
        result = result if result is not None else self.consensus(project, labels)
        return {"project": project, "policy": self.policy(project).to_dict(),
                **summary(result, _classes(labels))}

    def agreed_task_count(self, project: str, labels: ProjectLabels) -> int:
        result = self.consensus(project, labels)
        return len({t for d in DIMENSIONS for t, c in result[d].items() if c.state == "agreed"})

    def tasks_in_state(self, project: str, labels: ProjectLabels, state: str, result: dict | None = None) -> list[dict]:
        if state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}, got {state!r}")
        result = result if result is not None else self.consensus(project, labels)
        tasks = sorted({t for d in DIMENSIONS for t, c in result[d].items() if c.state == state})
        return [{"task": t, **{d: result[d][t].to_dict() for d in DIMENSIONS}} for t in tasks]

    # -- the training set
    def snapshot(self, project: str, labels: ProjectLabels) -> dict:
        """Writes the agreed labels as an immutable manifest; returns its id, hash, path, row
        count and the rows left out (how many, and why: the header says so too). Image entries
        are the tasks' URLs (the training job downloads them into its cache)."""
        result = self.consensus(project, labels)
        images = self.votes.image_urls(project)
        rows = _manifest_rows(result, images)
        left_out = {"no_image": len(_agreed_tasks(result)) - len(rows),
                    "fast_agreement": self._rows_set_aside(project, labels, result, images, rows)}
        header = {"classes": _classes(labels), "project": project, "policy": self.policy(project).to_dict(),
                  "left_out": left_out, "left_out_why": LEFT_OUT_WHY, "set_aside_votes": _set_aside_votes(result)}
        text = "\n".join(json.dumps(r, sort_keys=True) for r in [header] + rows) + "\n"
        digest = hashlib.sha256(text.encode()).hexdigest()
        folder = Path(self.settings.data_dir) / "projects" / project / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest[:16]}.jsonl"
        if not path.exists():
            write_text_atomically(path, text)
        self.redis.delete(keys.new_labels(project))
        return {"id": digest[:16], "sha256": digest, "path": str(path), "rows": len(rows), "left_out": left_out}

    def _rows_set_aside(self, project: str, labels: ProjectLabels, result: dict, images: dict,
                        rows: list[dict]) -> int:
        """How many tasks the manifest would hold as rows if the set-aside votes counted, and does not."""
        if not any(c.set_aside for d in DIMENSIONS for c in result[d].values()):
            return 0
        counting = replace(self.policy(project), count_fast_agreement=True)
        everything = compute(self.votes.all_votes(project), _classes(labels), counting)
        return len({r["task"] for r in _manifest_rows(everything, images)} - {r["task"] for r in rows})


LEFT_OUT_WHY = {
    "no_image": "agreed, but Label Studio never sent the task's image URL",
    "fast_agreement": "agreed only if the votes that equal the suggestion their annotator was shown, made "
                      "faster than the policy's rubber_stamp_seconds, counted (its count_fast_agreement)",
}


def _agreed_tasks(result: dict) -> list[int]:
    return sorted({t for d in DIMENSIONS for t, c in result[d].items() if c.state == "agreed"})


def _manifest_rows(result: dict, images: dict) -> list[dict]:
    """One row per agreed task with an image: its URL and each agreed dimension's soft label."""
    rows = []
    for task in _agreed_tasks(result):
        row = {"task": task, "image": images.get(task)}
        for d in DIMENSIONS:
            c = result[d].get(task)
            row[d] = c.soft if c is not None and c.state == "agreed" else None
        if row["image"]:
            rows.append(row)
    return rows


def _set_aside_votes(result: dict) -> dict[str, int]:
    return {d: sum(len(c.set_aside) for c in result[d].values()) for d in DIMENSIONS}


def vote_and_image(labels: ProjectLabels, annotation: dict, task: dict | None) -> tuple[Vote, str | None]:
    """The vote of an annotation event (InvalidInput if it has none) and its task's image URL."""
    task_id = task.get("id") if isinstance(task, dict) else None
    vote = vote_from_annotation(annotation, task_id, labels)
    return vote, labels.image_url(task)


def _crossed_threshold(client: redis.Redis, project: str, new_labels: int, threshold: int) -> bool:
    """Counts newly agreed labels since the last snapshot; True when this crossed a multiple of
    `threshold` (0: auto-training off). INCRBY is atomic, so of concurrent webhook threads only
    one sees a given multiple crossed."""
    if new_labels <= 0:
        return False
    total = client.incrby(keys.new_labels(project), new_labels)
    return threshold > 0 and (total - new_labels) // threshold != total // threshold


def _classes(labels: ProjectLabels) -> dict[str, tuple[str, ...]]:
    return {"aesthetic": labels.aesthetic_classes, "emotion": labels.emotion_classes}
