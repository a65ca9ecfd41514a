"""Publish to the Hugging Face Hub: the selected rows on a branch (or a pull request), then the card.

Two commits. ``DatasetDict.push_to_hub`` uploads the Parquet shards to the branch (created from the
default branch when missing) and writes the README metadata ``datasets`` needs (``configs``,
``dataset_info``). Then the README is read back at that commit, this library's section is added
(:func:`~hf_prospector.publishing.card.merge_card`) and committed with the figures, with the data commit
as parent, so that metadata survives and nothing committed in between is overwritten. Both commit
messages record the recipe. The endpoint is huggingface_hub's, so ``HF_ENDPOINT`` (read when
huggingface_hub is imported) points everything at another server.

The token comes from the argument, else huggingface_hub's lookup (``HF_TOKEN``, then the login cache);
it is only handed to huggingface_hub, and an error whose text would contain it is re-raised scrubbed.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from datasets import Dataset, DatasetDict
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, get_token
from huggingface_hub.constants import DEFAULT_REVISION, REPOCARD_NAME

from hf_prospector.publishing.card import (FIGURES_DIR, Publication, as_dataset_dict, commit_message,
                                           complete_provenance, default_revision, make_card, merge_card,
                                           require_rows)
from hf_prospector.sources import exception_chain, hub_unreachable, is_connection_error

HUB_DATASET_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class PublishError(RuntimeError):
    """A Hub error whose message had to be scrubbed of the token; the text says what went wrong."""


def resolve_token(token: str | None = None) -> str:
    """The token to publish with: ``token``, else ``HF_TOKEN``, else the one saved by ``hf auth login``."""
    token = token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass token=..., set HF_TOKEN, or run `hf auth login`")
    return token


def _mentions(err: BaseException, secret: str) -> bool:
    """Whether ``err`` or any exception chained to it shows ``secret`` in its message."""
    return any(secret in str(e) or secret in repr(e.args) for e in exception_chain(err))


@contextmanager
def _token_kept_secret(token: str) -> Iterator[None]:
    """Re-raise errors unchanged unless their text (or a chained error's) holds the token; then scrubbed."""
    try:
        yield
    except Exception as err:
        if _mentions(err, token):
            raise PublishError(f"{type(err).__name__}: {str(err).replace(token, '***')}") from None
        raise


@contextmanager
def _reaching(action: str) -> Iterator[None]:
    """A failure to connect becomes one error naming the endpoint and whether offline mode is on."""
    try:
        yield
    except Exception as err:
        if is_connection_error(err):
            raise hub_unreachable(action) from err
        raise


def _hub_license(api: HfApi, source: Any) -> str | None:
    """The license on the card of ``source`` when it is a Hub dataset id; None when unknown or unreachable."""
    if not isinstance(source, str) or not HUB_DATASET_ID.match(source) or Path(source).exists():
        return None
    try:
        card_data = api.dataset_info(source, expand=["cardData"]).card_data
    except Exception:  # a missing, private or unreachable source only means the license stays unknown
        return None
    return card_data.license if card_data is not None else None


def publish(selected: Dataset | DatasetDict, repo_id: str, *, revision: str | None = None,
            scored: Dataset | None = None, provenance: Mapping[str, Any] | None = None,
            thresholds: Mapping[str, float] | None = None, license: str | None = None,
            allow_default_branch: bool = False, allow_empty: bool = False, create_pr: bool = False,
            private: bool | None = None, token: str | None = None,
            sections: Sequence[tuple[str, str]] = ()) -> Publication:
    """Push ``selected`` (a Dataset = split "train", or a DatasetDict) and its card to dataset repo ``repo_id``.

    ``revision`` is the branch (default: :func:`default_revision` of the provenance); with ``create_pr``
    the commits open a pull request against it (against ``main`` when ``revision`` is None) and the
    result's ``revision`` is ``refs/pr/N``. Pushing to ``main`` itself needs ``allow_default_branch=True``.
    ``private`` applies when the repo is created. The license defaults to ``provenance["license"]``, else
    the source dataset's on the Hub, else the one already on the target card. A selection without rows
    needs ``allow_empty=True``; ``sections`` are more ``(title, Markdown)`` card sections. An endpoint that
    cannot be reached is a :class:`~hf_prospector.sources.HubUnreachableError` naming it.
    """
    splits = as_dataset_dict(selected)
    require_rows(splits, allow_empty)
    facts = complete_provenance(provenance, selected, scored)
    if revision is None and not create_pr:
        revision = default_revision(facts)
    if (revision or DEFAULT_REVISION) == DEFAULT_REVISION and not create_pr and not allow_default_branch:
        raise ValueError(f"refusing to push to the default branch {DEFAULT_REVISION!r}; pick another revision, "
                         "use create_pr=True, or pass allow_default_branch=True")
    token = resolve_token(token)
    summary, description = commit_message(facts)
    if token in summary + description:
        raise ValueError("the provenance contains the Hub token; remove it before publishing")
    with _token_kept_secret(token), _reaching(f"publish to {repo_id}"):
        api = HfApi(token=token)
        license = license or facts.get("license") or _hub_license(api, facts.get("source"))
        data_commit = splits.push_to_hub(repo_id, revision=revision, create_pr=create_pr, private=private,
                                         token=token, commit_message=summary, commit_description=description)
        target = data_commit.pr_revision if create_pr else revision
        with tempfile.TemporaryDirectory() as tmp:
            readme = api.hf_hub_download(repo_id, REPOCARD_NAME, repo_type="dataset", revision=data_commit.oid,
                                         local_dir=Path(tmp) / "pushed")
            ours = make_card(scored, tmp, selected=splits, provenance=facts, thresholds=thresholds, license=license,
                              sections=sections)
            card = merge_card(DatasetCard.load(readme), ours)
            operations = [CommitOperationAdd(REPOCARD_NAME, str(card).encode())]
            operations += [CommitOperationAdd(f"{FIGURES_DIR}/{png.name}", str(png))
                           for png in sorted((Path(tmp) / FIGURES_DIR).glob("*.png"))]
            card_commit = api.create_commit(repo_id, operations, commit_message=f"Dataset card: {summary}",
                                            commit_description=description, repo_type="dataset", revision=target,
                                            parent_commit=data_commit.oid)
    return Publication(revision=target, commit=card_commit.oid, location=str(card_commit.repo_url),
                       pr_url=data_commit.pr_url)
