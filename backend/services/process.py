"""The services of one process, built once around its settings and Redis connection: the Label
Studio protocol, versions, consensus and training jobs, sharing the project records, the model
cache and the hot swap. The app factory keeps one in `app.extensions["aesemo"]`; the command line
makes one per call."""
from __future__ import annotations

import logging

import redis

from backend.core.settings import Settings
from backend.labelstudio.follow import VersionFollower
from backend.labelstudio.users import AnnotatorNames
from backend.serving.hotswap import HotSwap
from backend.serving.models import ModelCache
from backend.services.consensus import ConsensusService
from backend.services.ml_backend import LabelStudioBackend
from backend.services.projects import Projects
from backend.services.training import TrainingService
from backend.services.versions import VersionService
from backend.votes.project_consensus import ProjectConsensus

log = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: Settings, client: redis.Redis):
        self.settings, self.redis = settings, client
        self.projects = Projects(settings, client)
        self.models = ModelCache(settings.max_image_pixels, settings.inference_path,
                                 settings.runtime_min_agreement, settings.predictor_precision)
        self.swap = HotSwap(settings, client, self.models)
        follower = VersionFollower(settings, client)
        votes = ProjectConsensus(client, settings, on_auto_train=lambda project: self.training.auto_train(project))
        self.training = TrainingService(settings, self.projects, votes)
        self.labelstudio = LabelStudioBackend(settings, client, self.projects, self.swap, votes,
                                              self.training, follower)
        self.versions = VersionService(settings, client, self.projects, follower, self.swap.priority)
        self.consensus = ConsensusService(settings, self.projects, votes, AnnotatorNames(client, settings))
        if settings.label_studio_api_key and not settings.label_studio_url:
            log.warning("LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not: the key goes only to "
                        "LABEL_STUDIO_URL, so it is not used; set LABEL_STUDIO_URL to Label Studio's address")

    def close(self) -> None:
        """Stops the hot swap's threads (started by the app factory)."""
        self.swap.stop()
