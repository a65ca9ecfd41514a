"""The embedded default: publish to a dataset repository on disk, versioned with git, no Hub needed.

The folder has the Hub's layout (``data/{split}-00000-of-00001.parquet``, ``README.md`` with ``configs``
and ``dataset_info`` the way ``push_to_hub`` writes them, ``figures/*.png``), so
``datasets.load_dataset(path)`` reads the checked-out revision and the folder can later be pushed to the
Hub as it is. Each publish is a commit on its own branch (the revision), made from ``main``, which holds
only ``.gitattributes``; :func:`list_revisions` lists them and :func:`checkout_revision` switches.
git runs as a subprocess; a commit uses the user's git identity, or ``hf-prospector`` when none is set.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from datasets import Dataset, DatasetDict, DatasetInfo, SplitDict, SplitInfo, config
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from datasets.utils.py_utils import convert_file_size_to_int
from huggingface_hub import DatasetCard

from hf_prospector.publishing.card import (FIGURES_DIR, Publication, as_dataset_dict, commit_message,
                                           complete_provenance, default_revision, make_card, merge_card,
                                           require_rows)

DEFAULT_BRANCH = "main"
DATA_DIR = "data"
GITATTRIBUTES = "*.parquet binary\n*.png binary\n"
FALLBACK_IDENTITY = ("hf-prospector", "hf-prospector@localhost")


class GitError(RuntimeError):
    """A git command failed; the message has the command and git's own words."""


@dataclass(frozen=True)
class LocalRevision:
    """A branch of a local dataset repository."""

    name: str
    commit: str
    summary: str  # the first line of its latest commit message


def _git(repo: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {repo}: {(result.stderr or result.stdout).strip()}")
    return result


def _commit(repo: Path, message: str) -> str:
    """Commit everything in the working tree; returns the new commit id."""
    identity = []
    for key, fallback in zip(("user.name", "user.email"), FALLBACK_IDENTITY):
        if _git(repo, "config", "--get", key, check=False).returncode != 0:
            identity += ["-c", f"{key}={fallback}"]
    _git(repo, "add", "--all")
    _git(repo, *identity, "commit", "--quiet", "--file=-", stdin=message)
    return _git(repo, "rev-parse", "HEAD").stdout.strip()


def _branch_exists(repo: Path, name: str) -> bool:
    return _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0


def _changes(repo: Path) -> list[str]:
    """Paths with uncommitted changes (``git status --porcelain``)."""
    return [line[3:] for line in _git(repo, "status", "--porcelain").stdout.splitlines() if line]


def _require_clean(repo: Path) -> None:
    changes = _changes(repo)
    if changes:
        shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise GitError(f"{repo} has uncommitted changes ({shown}); commit or discard them first "
                       f"(see git -C {repo} status)")


def init_repository(path: str | Path) -> Path:
    """Make ``path`` (missing or empty) a dataset repository: git, branch ``main`` with ``.gitattributes``."""
    repo = Path(path)
    if (repo / ".git").exists():
        return repo
    if repo.exists() and not repo.is_dir():
        raise FileExistsError(f"{repo} is a file, not a folder; publish to a new or empty folder, or to an "
                              "existing dataset repository")
    if repo.exists() and any(repo.iterdir()):
        raise FileExistsError(f"{repo} exists, is not empty and is not a git repository; pick an empty or new folder")
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "--quiet", f"--initial-branch={DEFAULT_BRANCH}")
    (repo / ".gitattributes").write_text(GITATTRIBUTES)
    _commit(repo, "Initialize dataset repository (hf-prospector)\n\nEach selection is published on its own branch.")
    return repo


def list_revisions(path: str | Path) -> list[LocalRevision]:
    """The branches of the repository at ``path``, oldest commit first."""
    out = _git(Path(path), "for-each-ref", "--sort=committerdate",
               "--format=%(refname:short)%00%(objectname)%00%(contents:subject)", "refs/heads").stdout
    return [LocalRevision(*line.split("\0")) for line in out.splitlines() if line]


def checkout_revision(path: str | Path, revision: str) -> None:
    """Check out ``revision`` so that ``datasets.load_dataset(path)`` reads it; refuses to lose local changes."""
    repo = Path(path)
    _require_clean(repo)
    _git(repo, "checkout", "--quiet", revision)


def _write_data(repo: Path, splits: DatasetDict, card: DatasetCard) -> None:
    """Parquet shards under ``data/``; ``card`` gets the ``configs`` and ``dataset_info`` push_to_hub would write."""
    shutil.rmtree(repo / DATA_DIR, ignore_errors=True)
    (repo / DATA_DIR).mkdir()
    split_dict, download_size = SplitDict(), 0
    for split, ds in splits.items():
        num_bytes = sum(batch.nbytes for batch in ds.with_format("arrow").iter(batch_size=10_000))
        shards = int(num_bytes / convert_file_size_to_int(config.MAX_SHARD_SIZE)) + 1
        for index in range(shards):
            path = repo / DATA_DIR / f"{split}-{index:05d}-of-{shards:05d}.parquet"
            ds.shard(num_shards=shards, index=index, contiguous=True).to_parquet(path)
            download_size += path.stat().st_size
        split_dict.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(ds)))
    info = DatasetInfo(features=next(iter(splits.values())).features, splits=split_dict,
                       download_size=download_size, dataset_size=sum(s.num_bytes for s in split_dict.values()))
    data_files = [{"split": split, "path": f"{DATA_DIR}/{split}-*"} for split in splits]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card.data)
    DatasetInfosDict({"default": info}).to_dataset_card_data(card.data)


def publish_local(selected: Dataset | DatasetDict, path: str | Path, *, revision: str | None = None,
                  scored: Dataset | None = None, provenance: Mapping[str, Any] | None = None,
                  thresholds: Mapping[str, float] | None = None, license: str | None = None,
                  allow_default_branch: bool = False, allow_empty: bool = False,
                  sections: Sequence[tuple[str, str]] = ()) -> Publication:
    """Commit ``selected`` (a Dataset = split "train", or a DatasetDict) and its card on branch ``revision``.

    The branch is created from ``main`` when missing (named by :func:`default_revision` when ``revision``
    is None) and left checked out. ``scored`` (all rows, with scores) feeds the card's "all rows"
    statistics; without it the card describes the published rows alone. Publishing to ``main`` needs
    ``allow_default_branch=True``, and a selection without rows ``allow_empty=True``. Publishing what the
    revision already holds makes no commit: the result has ``unchanged=True`` and the revision's commit.
    On failure the repository is put back as it was. ``sections`` are more ``(title, Markdown)`` card sections.
    """
    splits = as_dataset_dict(selected)
    require_rows(splits, allow_empty)
    facts = complete_provenance(provenance, selected, scored)
    revision = revision or default_revision(facts)
    if revision == DEFAULT_BRANCH and not allow_default_branch:
        raise ValueError(f"refusing to publish on the default branch {DEFAULT_BRANCH!r}; pick another revision "
                         "or pass allow_default_branch=True")
    repo = init_repository(path)
    if _git(repo, "check-ref-format", "--branch", revision, check=False).returncode != 0:
        raise ValueError(f"{revision!r} is not a valid git branch name; use letters, digits, '-', '_', '.' and '/'")
    _require_clean(repo)
    if not _branch_exists(repo, DEFAULT_BRANCH):
        raise GitError(f"{repo} has no {DEFAULT_BRANCH!r} branch to start revisions from")
    on_branch = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False).stdout.strip()
    previous = on_branch or _git(repo, "rev-parse", "HEAD").stdout.strip()  # a branch, or a detached commit
    created = not _branch_exists(repo, revision)
    _git(repo, "checkout", "--quiet", *(["-b", revision, DEFAULT_BRANCH] if created else [revision]))
    try:
        readme = repo / config.REPOCARD_FILENAME
        card = DatasetCard.load(readme) if readme.exists() else DatasetCard("---\n\n---\n")
        _write_data(repo, splits, card)
        shutil.rmtree(repo / FIGURES_DIR, ignore_errors=True)
        ours = make_card(scored, repo, selected=splits, provenance=facts, thresholds=thresholds, license=license,
                          sections=sections)
        merge_card(card, ours).save(readme)
        if not created and not _changes(repo):  # the revision already holds these rows and this card
            return Publication(revision=revision, commit=_git(repo, "rev-parse", "HEAD").stdout.strip(),
                               location=str(repo), unchanged=True)
        summary, description = commit_message(facts)
        commit = _commit(repo, f"{summary}\n\n{description}\n")
    except BaseException:
        _git(repo, "reset", "--hard", "--quiet", check=False)
        _git(repo, "clean", "-d", "--force", "--quiet", check=False)
        _git(repo, "checkout", "--quiet", previous, check=False)
        if created:
            _git(repo, "branch", "-D", revision, check=False)
        raise
    return Publication(revision=revision, commit=commit, location=str(repo))
