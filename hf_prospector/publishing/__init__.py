"""Publishing selected rows as a citable revision with a dataset card: on disk with git, or on the Hub.

* :mod:`.card` — the recipe (provenance, commit message, revision name) and the dataset card;
* :mod:`.local` — the embedded default: a git-versioned dataset folder ``datasets.load_dataset`` reads;
* :mod:`.hub` — the Hugging Face Hub: ``push_to_hub`` on a branch or pull request, then the card.
"""

from hf_prospector._lazy import lazy_attributes
from hf_prospector.publishing.card import (CARD_COLUMNS, Provenance, Publication, commit_message, default_revision,
                                           make_card, score_stats, write_card)
from hf_prospector.publishing.hub import PublishError, publish
from hf_prospector.publishing.local import (GitError, LocalRevision, checkout_revision, init_repository,
                                            list_revisions, publish_local)

__all__ = ["CARD_COLUMNS", "Provenance", "Publication", "commit_message", "default_revision", "make_card",
           "score_stats", "write_card", "PublishError", "publish", "GitError", "LocalRevision",
           "checkout_revision", "init_repository", "list_revisions", "publish_local"]
__getattr__, __dir__ = lazy_attributes(__name__, renamed={"SCORE_COLUMNS": "CARD_COLUMNS"})
