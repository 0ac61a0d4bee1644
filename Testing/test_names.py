"""One list per fact: the torch-free name lists (names.py) that the parser and the Slicer module use equal what the
registries hold, and the registries are keyed by each class's own name."""

from MRtoCTSynthesisLib import names
from MRtoCTSynthesisLib.apps.cli import build_parser
from MRtoCTSynthesisLib.models.methods import METHODS
from MRtoCTSynthesisLib.models.samplers import DEFAULT_SAMPLER, SAMPLERS
from MRtoCTSynthesisLib.pipeline.synthesis import COMPILE_MODES
from MRtoCTSynthesisLib.slicer import bridge


def _subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {opt: a for a in sub.choices[name]._actions for opt in a.option_strings}


def test_sampler_registry_is_keyed_by_class_names_and_matches_the_name_list():
    assert all(key == cls.name for key, cls in SAMPLERS.items())
    assert tuple(SAMPLERS) == names.DIFFUSION_SAMPLERS
    assert DEFAULT_SAMPLER == names.DEFAULT_SAMPLER


def test_method_registry_matches_the_name_list_with_samplers_defaults_and_trainability():
    assert all(key == cls.method for key, cls in METHODS.items())
    assert tuple(METHODS) == names.METHOD_NAMES
    for name, cls in METHODS.items():
        info = names.METHOD_INFO[name]
        assert tuple(cls.valid_samplers) == info["samplers"], name
        assert cls.default_sampler == info["default_sampler"], name
        assert cls.trainable == info["trainable"], name
    # every sampler a method runs with is a --sampler choice, and every choice belongs to some method
    used = {s for cls in METHODS.values() for s in cls.valid_samplers}
    assert used == set(names.SAMPLER_CHOICES)


def test_parser_choices_come_from_the_name_lists():
    synth, train, evaluate = _subparser("synthesize"), _subparser("train"), _subparser("evaluate")
    assert tuple(synth["--sampler"].choices) == names.SAMPLER_CHOICES
    assert tuple(synth["--compile"].choices) == names.COMPILE_MODES == COMPILE_MODES
    assert tuple(train["--method"].choices) == tuple(m for m, cls in METHODS.items() if cls.trainable)
    assert set(evaluate["--samplers"].choices) == set(names.SAMPLER_CHOICES) | {"default"}


def test_slicer_labels_cover_every_sampler_and_method():
    assert set(bridge.SAMPLER_LABELS) == set(names.SAMPLER_CHOICES)
    assert {m: e["label"] for m, e in bridge.FALLBACK_METHODS.items()} == names.METHOD_LABELS
