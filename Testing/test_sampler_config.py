"""Sampler.to_config()/from_config(): every constructor argument is recorded, and a sampler rebuilt from its
(JSON round-tripped) config is the same sampler: equal config and bit-identical samples from the same noise."""

import json

import pytest
import torch

from MRtoCTSynthesisLib.errors import InputError
from MRtoCTSynthesisLib.models.diffusion import VEProcess, VPProcess
from MRtoCTSynthesisLib.models.samplers import SAMPLERS, DDIMSampler, Sampler, make_sampler, sampler_options

#: a non-default value for every option, so that a config that forgot one cannot rebuild the same sampler
NON_DEFAULT = {"clip_x0": False, "clip_range": (-0.9, 0.8), "t_spacing": "quadratic", "eta": 0.5, "snr": 0.1,
               "corrector_steps": 2, "predictor": "reverse_diffusion", "rtol": 2e-3, "atol": 3e-3, "t_end": 0.01,
               "variable": "t", "check_every": 2, "order": 1}


def _model_fn(x, t):
    """A smooth analytic stand-in for a network's eps prediction (no weights needed)."""
    a2 = torch.exp(-(0.5 * 1000 * (1e-4 * t + 0.5 * (0.02 - 1e-4) * t * t)))
    return (x * (1 - a2).sqrt().reshape(-1, *[1] * (x.dim() - 1))).to(x.dtype)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("process", [VPProcess(T=100), VEProcess()], ids=["vp", "ve"])
def test_config_records_every_argument_and_rebuilds_the_same_sampler(name, process):
    opts = {k: NON_DEFAULT[k] for k in sampler_options(name)}
    steps = 40 if name == "ode" else 3
    sampler = make_sampler(name, process, steps, **opts)
    config = json.loads(json.dumps(sampler.to_config()))  # what a JSON record keeps
    assert set(config) == {"name", "steps", "process"} | set(sampler_options(name))
    for key, value in opts.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key
    rebuilt = Sampler.from_config(config)
    assert type(rebuilt) is type(sampler) and rebuilt.to_config() == config
    assert SAMPLERS[name].from_config(config, process=process).to_config() == config

    def draw(s):
        return s.sample(_model_fn, shape=(2, 1, 4, 4), generator=torch.Generator().manual_seed(7)).x0

    assert torch.equal(draw(sampler), draw(rebuilt))


def test_defaults_are_recorded_resolved():
    cfg = make_sampler("ode", VPProcess(T=100), 10).to_config()
    assert cfg["t_end"] == pytest.approx(0.01) and cfg["t_spacing"] == "uniform"  # VP t_floor = 1/T
    assert make_sampler("dpmpp", VPProcess(), 5).to_config()["t_spacing"] == "logsnr"


def test_from_config_validates():
    cfg = make_sampler("ddim", VPProcess(), 5, eta=0.3).to_config()
    with pytest.raises(InputError, match="not 'dpmpp'"):
        SAMPLERS["dpmpp"].from_config(cfg)
    with pytest.raises(InputError, match="unknown option"):
        Sampler.from_config({**cfg, "bogus": 1})
    with pytest.raises(InputError, match="'eta' must be"):
        DDIMSampler.from_config({**cfg, "eta": 3.0})
    with pytest.raises(InputError, match="'name' and 'steps'"):
        Sampler.from_config({"eta": 0.1})


def test_trajectory_info_carries_the_config():
    s = make_sampler("pc", VPProcess(T=50), 2, snr=0.2, corrector_steps=1)
    info = s.sample(_model_fn, shape=(1, 1, 4, 4), generator=torch.Generator().manual_seed(0)).trajectory_info
    assert info["config"] == s.to_config() and info["config"]["snr"] == 0.2
