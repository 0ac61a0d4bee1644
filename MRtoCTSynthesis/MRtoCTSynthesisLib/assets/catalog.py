"""The model catalog (``Resources/models.json`` beside the Slicer module): which checkpoints exist, where they
come from and what they were trained on. torch-free: the Slicer module and ``mrtoct info --json`` both read it.

Each entry: ``name`` (unique, also the cache file name), ``title``, ``method`` (a key of
:data:`..names.METHOD_INFO`), ``anatomy``, ``mr_contrast``, ``training_spacing_mm`` (``[x, y, z]`` in mm,
``null`` for a slice-resized model; a ``null`` axis takes any spacing), ``size`` (bytes) and ``sha256`` of
the whole file, ``licence``, ``bundled`` with ``path`` (relative to the module folder) for files shipped
with the extension, or ``url`` (``https://`` only) for a download. A model that is neither bundled nor
published says so in ``availability`` ("not published yet"); no entry has a made-up URL.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from ..names import METHOD_INFO

CATALOG_FORMAT = "mrtoct-model-catalog"
#: ``<module folder>/Resources/models.json``; the module folder holds MRtoCTSynthesisLib (absent in a pip install)
CATALOG_PATH = Path(__file__).resolve().parents[2] / "Resources" / "models.json"
REQUIRED = ("name", "title", "method", "anatomy", "mr_contrast", "training_spacing_mm", "size", "sha256", "licence",
            "bundled")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _bad(path, problem: str) -> InputError:
    return InputError(f"the model catalog {path} is not valid: {problem}.",
                      "restore Resources/models.json from the extension (each entry needs " + ", ".join(REQUIRED)
                      + ", and a path when bundled or an https url or availability otherwise).")


def validate_catalog(doc, path="models.json") -> list[dict]:
    """The checked ``models`` list of a catalog document (raises :class:`InputError` naming the bad entry)."""
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT or not isinstance(doc.get("models"), list):
        raise _bad(path, f"expected an object with format {CATALOG_FORMAT!r} and a 'models' list")
    seen = set()
    out = []
    for i, m in enumerate(doc["models"]):
        if not isinstance(m, dict):
            raise _bad(path, f"entry {i} is not an object")
        missing = [k for k in REQUIRED if k not in m]
        if missing:
            raise _bad(path, f"entry {i} ({m.get('name', '?')}) lacks {', '.join(missing)}")
        name = m["name"]
        if not isinstance(name, str) or not _NAME.match(name) or name in seen:
            raise _bad(path, f"entry {i}: name {name!r} is not a unique plain file name")
        seen.add(name)
        if m["method"] not in METHOD_INFO:
            raise _bad(path, f"{name}: unknown method {m['method']!r} (known: {', '.join(METHOD_INFO)})")
        if not isinstance(m["size"], int) or m["size"] <= 0 or not isinstance(m["sha256"], str) \
                or not _SHA.match(m["sha256"]):
            raise _bad(path, f"{name}: size must be a positive integer and sha256 64 lower-case hex digits")
        spacing = m["training_spacing_mm"]
        if spacing is not None and not (isinstance(spacing, list) and len(spacing) == 3
                                        and all(s is None or (isinstance(s, (int, float)) and s > 0) for s in spacing)):
            raise _bad(path, f"{name}: training_spacing_mm must be null or three positive numbers (null: any)")
        url = m.get("url")
        if m["bundled"]:
            if not isinstance(m.get("path"), str) or Path(m["path"]).is_absolute() or ".." in Path(m["path"]).parts:
                raise _bad(path, f"{name}: a bundled model needs a relative 'path' inside the module folder")
        elif url is None:
            if "not published" not in str(m.get("availability", "")):
                raise _bad(path, f"{name}: neither bundled nor given a url; say availability: 'not published yet'")
        elif not (isinstance(url, str) and url.startswith("https://")):
            raise _bad(path, f"{name}: url must be an https:// address")
        out.append(dict(m))
    return out


def load_catalog(path=CATALOG_PATH) -> list[dict]:
    """The validated entries of the catalog file at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"the model catalog {path} does not exist.",
                         "reinstall the extension (Resources/models.json comes beside MRtoCTSynthesis.py).") from None
    except (OSError, ValueError) as exc:
        raise _bad(path, f"it cannot be read as JSON ({exc})") from None
    return validate_catalog(doc, path)
