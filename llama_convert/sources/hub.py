"""A source named the way HuggingFace users name models: a hub repo id (`meta-llama/Llama-3.2-1B`, at
`--revision`), or a hub cache folder `models--ORG--NAME`, resolved to one snapshot directory of the local
hub cache by huggingface_hub itself (HF_HUB_CACHE / HF_HOME, its refs and snapshots). Nothing is fetched
unless --download says so; then huggingface_hub downloads the files a conversion reads.

A snapshot's files are links to blobs named by their sha256, which the conversion checks (hashing.py):
the hub does not check what it downloaded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConvertError
from ..core.extras import needed_for, pinned_line

# What `org/name` may look like on the hub (huggingface_hub's validate_repo_id, in short).
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# The files a conversion reads; --download fetches these and no others (no .bin when safetensors exist).
_CONFIGS = ["config.json", "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"]


@dataclass(frozen=True)
class Spelling:
    """How this module's advice names the two options that pick a hub source: as the command line spells
    them by default; a bulk manifest row passes its own keys."""
    download: str = "pass --download"
    revision: str = "--revision"


def hub_origin(snapshot: Path) -> dict | None:
    """{"repo_id", "commit"} when `snapshot` is `.../models--ORG--NAME/snapshots/COMMIT`; else None."""
    snapshot = Path(snapshot).absolute()
    repo = snapshot.parent.parent
    if snapshot.parent.name != "snapshots" or not repo.name.startswith("models--") or not _COMMIT.fullmatch(snapshot.name):
        return None
    return {"repo_id": repo.name.removeprefix("models--").replace("--", "/", 1), "commit": snapshot.name}


def looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.fullmatch(text)) and ".." not in text and not text.startswith(".")


def resolve_source(src: str | Path, revision: str | None = None, download: bool = False,
                   spelling: Spelling = Spelling()) -> Path:
    """The local directory SRC names: SRC itself when it is a directory (a `models--` cache folder: its
    snapshot at `revision`, default main), else the hub cache's snapshot of repo id SRC at `revision`,
    fetched first with `download`. Anything else is returned as it is, for the reader to refuse."""
    path = Path(src)
    if path.is_dir() and path.name.startswith("models--") and (path / "snapshots").is_dir():
        repo_id = path.name.removeprefix("models--").replace("--", "/", 1)
        return _snapshot(repo_id, revision, False, path.parent, str(path), spelling)
    if path.is_dir() and path.name.startswith("models--") and not (path / "config.json").exists():
        raise ConvertError(path, "is a HF hub cache folder with no snapshots/ directory",
                           f"an interrupted download? fetch it again ({spelling.download} with its repo id), or give a "
                           "directory that holds config.json")
    if path.exists() or not looks_like_repo_id(str(src)):
        if revision is not None and path.exists():
            raise ConvertError(path, f"is a local directory, and {spelling.revision} only picks a snapshot of a hub "
                               "repo id or of a models--ORG--NAME cache folder",
                               f"leave out {spelling.revision}, or name the repo id")
        return path
    return _snapshot(str(src), revision, download, None, str(src), spelling)


def _snapshot(repo_id: str, revision: str | None, download: bool, cache: Path | None, shown: str,
              spelling: Spelling) -> Path:
    try:
        with needed_for(f"a hub repo id as the source ({repo_id})", "hub"):
            import huggingface_hub
            from huggingface_hub import constants, errors
    except ConvertError:
        if cache is not None or download:
            raise
        # A mistyped relative path looks like a repo id too: say first what is certainly true.
        raise ConvertError(Path(shown), "source directory not found",
                           f"if {shown} is a hub repo id, install the hub extra: {pinned_line('hub')}") from None
    where = Path(cache or constants.HF_HUB_CACHE)
    rev = revision or "main"
    try:
        if download:
            return Path(_download(huggingface_hub, repo_id, revision, where))
        return Path(huggingface_hub.snapshot_download(repo_id, revision=rev, cache_dir=where, local_files_only=True))
    except errors.LocalEntryNotFoundError:
        if cache is not None:
            snaps = sorted(p.name for p in (cache / f"models--{repo_id.replace('/', '--')}" / "snapshots").glob("*"))
            raise ConvertError(Path(shown), f"holds no snapshot for revision {rev!r} (snapshots: "
                               f"{', '.join(s[:12] for s in snaps) or 'none'})",
                               f"give {spelling.revision} COMMIT, or a directory under snapshots/") from None
        raise ConvertError(Path(shown), f"source directory not found, and the hub cache {where} holds no snapshot of "
                           f"repo {repo_id} at revision {rev!r}",
                           f"{spelling.download} to fetch it with huggingface_hub, or set HF_HUB_CACHE / HF_HOME to "
                           "the cache that holds it") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError) as e:
        raise ConvertError(Path(shown), f"the hub refused it: {type(e).__name__}",
                           f"check the repo id and {spelling.revision}; a gated or private repo needs `hf auth login` "
                           "(or HF_TOKEN)") from None
    except (OSError, errors.HfHubHTTPError) as e:
        raise ConvertError(Path(shown), f"could not be fetched from the hub: {' '.join(str(e).split())[:200]}",
                           "check the network (or HF_ENDPOINT), then run again: finished files are kept") from None


def _download(huggingface_hub, repo_id: str, revision: str | None, cache: Path) -> str:
    """Fetch the config, tokenizer and weight files of one snapshot: safetensors when the repo has them,
    else pytorch_model*.bin (never both)."""
    files = huggingface_hub.list_repo_files(repo_id, revision=revision)
    weights = [f for f in files if "/" not in f and (f.endswith(".safetensors") or f == "model.safetensors.index.json")]
    if not weights:
        weights = [f for f in files if "/" not in f and f.startswith("pytorch_model") and
                   (f.endswith(".bin") or f.endswith(".bin.index.json"))]
    return huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                             allow_patterns=[*_CONFIGS, *weights])
