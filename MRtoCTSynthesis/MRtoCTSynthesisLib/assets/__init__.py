"""Files shipped with the engine: the demo case and the demo models (one place for their paths)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DEMO_CASE = ASSETS_DIR / "demo_case"
DEMO_MODEL = ASSETS_DIR / "demo_ddpm.safetensors"
DEMO_SYNDIFF = ASSETS_DIR / "demo_syndiff.safetensors"
#: the 2 mm physical-scale DDPM (records conditioning.pixel_spacing_mm; README "The model at 2 mm pixels")
DEFAULT_MODEL = ASSETS_DIR / "default_ddpm.safetensors"
