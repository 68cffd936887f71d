"""Run-dir naming: where a trial's stage logs and a deployment's files live under `logs_dir`.

The rule, fixed across versions because run dirs and log folders outlive a release:

- A *plain* name — 1 to 100 characters from ``A-Z a-z 0-9 _ . -`` that does not start with
  ``.`` or ``-`` — is its own folder name: ``my_study`` -> ``my_study``.
- Any other name maps to ``<slug>~<hash>``: ``slug`` is the name with every run of other
  characters replaced by ``_``, leading/trailing ``._-`` stripped, cut to 80 bytes (``_`` when
  nothing is left); ``hash`` is the first 16 hex digits of SHA-256 over the exact name's UTF-8
  (surrogates passed through). ``~`` never occurs in a plain name, so a hashed folder name can
  never equal a plain one: the mapping is injective (up to a 64-bit hash collision), at most
  97 bytes long, and readable where the name allows.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pipeline_v2.models import Trial

MAX_PLAIN = 100
MAX_SLUG_BYTES = 80
HASH_HEX = 16
_PLAIN = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_PLAIN - 1}}}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.-]+")


def folder_name(name: str) -> str:
    """The folder for `name`: itself when plain, else a readable slug plus a short hash."""
    if _PLAIN.fullmatch(name):
        return name
    slug = _UNSAFE_RUN.sub("_", name).strip("._-")[:MAX_SLUG_BYTES] or "_"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    return f"{slug}~{digest}"


def trial_dir(logs_dir: Path, trial: Trial, kind: str = "trials") -> Path:
    """`logs/<kind>/<study>/<number>/`: one folder per trial, whatever the study is called
    (`@` never occurs in a folder name, so the generation suffix stays distinct)."""
    study = folder_name(trial.study) + (f"@{trial.generation}" if trial.generation else "")
    return logs_dir / kind / study / str(trial.number)
