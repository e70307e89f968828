"""The protocol record: every setting that changes a POPE/CHAIR number, written next to the number.

Published numbers disagree mostly because one of these changed silently (question-file version, parser, decoding,
max_new_tokens, image list, lemmatiser, batch size through padding). A run refuses to resume into a directory whose
recorded protocol differs from the current one, so one results file never mixes two protocols.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata

from .errors import EvalInputError

PACKAGES = ("vlmfix", "torch", "transformers", "accelerate", "tokenizers", "pycocotools", "lemminflect", "pillow",
            "nltk")
# Keys that may differ between an interrupted run and its resumption without changing any result.
VOLATILE = ("versions", "world_size", "device", "device_map", "output", "parser")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "vlmfix":
                out[name] = "source"
    return out


def method_records(cfgs) -> list[dict]:
    from vlmfix.config import config_record

    return [config_record(c) for c in cfgs]


def check_resumable(previous: dict, current: dict):
    """Raise if a resumed run would change a setting that affects results (compared in JSON form, as recorded)."""
    current = json.loads(json.dumps(current))
    diff = sorted(k for k in set(previous) | set(current)
                  if k not in VOLATILE and previous.get(k) != current.get(k))
    if diff:
        raise EvalInputError(f"cannot resume: settings differ from the interrupted run in {diff}; use the same "
                             "options, another --output directory, or --overwrite")
