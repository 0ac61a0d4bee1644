"""``mrtoct info``: what this engine offers (methods, samplers per method, the model catalog, versions), or with
``--model`` what one checkpoint is. ``--json`` prints one JSON document on one line of stdout; the Slicer module
reads its method, sampler and model lists from it, so that Slicer's own process never imports torch."""

from __future__ import annotations

import json
import sys

INFO_FORMAT = "mrtoct-engine-info"


def add_parser(sub) -> None:
    inf = sub.add_parser("info", help="list the engine's methods, samplers and models, or describe one checkpoint "
                                      "(--model)")
    inf.add_argument("--model", help="describe this checkpoint (method, network, schedule, training data) instead")
    inf.add_argument("--json", action="store_true", help="print one JSON document on one line (for programs: the "
                                                         "Slicer module reads it)")
    inf.set_defaults(func=run)


def engine_info() -> dict:
    """The document of ``mrtoct info --json``: versions, every registered method with its samplers, the catalog."""
    # torch and the registries load here, not at import: the parser (mrtoct --help) stays light
    import torch

    from ... import __version__
    from ...assets.catalog import CATALOG_PATH, load_catalog
    from ...errors import InputError
    from ...models.methods import METHODS
    from ...names import METHOD_LABELS, SAMPLER_LABELS

    methods = [{"name": name, "label": METHOD_LABELS.get(name, name), "samplers": list(cls.valid_samplers),
                "default_sampler": cls.default_sampler} for name, cls in METHODS.items()]
    try:
        models, catalog_problem = load_catalog(CATALOG_PATH), None
    except InputError as err:  # a pip-installed engine has no Resources/ folder: say so, list no models
        models, catalog_problem = [], err.problem
    return {"format": INFO_FORMAT, "format_version": 1, "engine_version": __version__,
            "python": sys.version.split()[0], "torch": torch.__version__, "methods": methods,
            "sampler_labels": {name: SAMPLER_LABELS.get(name, name) for m in methods for name in m["samplers"]},
            "catalog": str(CATALOG_PATH), "catalog_problem": catalog_problem, "models": models}


def run(args) -> int:
    if args.model:
        from ...models.checkpoint import describe_checkpoint

        text = describe_checkpoint(args.model)
        print(json.dumps({"model": str(args.model), "description": text}) if args.json else text)
        return 0
    info = engine_info()
    if args.json:
        print(json.dumps(info, ensure_ascii=True))
        return 0
    print(f"MRtoCTSynthesis engine {info['engine_version']} (Python {info['python']}, torch {info['torch']})")
    print("methods (samplers; * = default):")
    for m in info["methods"]:
        samplers = ", ".join(s + ("*" if s == m["default_sampler"] else "") for s in m["samplers"])
        print(f"  {m['name']:<11} {m['label']}  [{samplers}]")
    print(f"models ({info['catalog']}):" if not info["catalog_problem"] else f"models: {info['catalog_problem']}")
    for m in info["models"]:
        where = "bundled" if m["bundled"] else (m.get("url") or m.get("availability", ""))
        print(f"  {m['name']:<13} {m['method']:<10} {m['size'] / 1e6:6.1f} MB  {where}  {m['title']}")
    return 0
