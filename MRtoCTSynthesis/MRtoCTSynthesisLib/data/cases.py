"""Paired MR/CT cases on disk -> training slices on the model grid.

Folder layout (SynthRAD): ``<root>/<case>/mr.nii.gz``, ``<root>/<case>/ct.nii.gz`` and optionally
``<root>/<case>/mask.nii.gz``, the MR already registered to the CT (``mrtoct register``). ``mrtoct
phantom`` writes this layout. For the unpaired methods (``syndiff``, ``cyclegan``) a training case may hold
only ``mr`` or only ``ct`` (unpaired data from different patients); validation and test cases always need
both, since they are scored against the real CT. Each case's MR is normalised per volume, its CT mapped with the
fixed HU
mapping, both reoriented to canonical axial order and put on the model grid exactly as inference does
(:mod:`.slicing`), so training and synthesis see identical inputs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io.atomic import atomic_write, write_json
from ..io.intensity import MRNormalization, check_ct_in_hu, hu_to_model
from ..io.slicing import plan_physical_grid, to_canonical, to_model_grid, to_physical_grid
from ..io.volume import Volume, read_volume, require_same_geometry
from ..pipeline.registration import register as register_pair


@dataclass
class Case:
    name: str
    mr: Volume | None  # None only for single-modality cases of unpaired training (load_case(partial=True))
    ct: Volume | None
    mask: Volume | None


def find_volume(folder, stem: str) -> Path | None:
    """``<folder>/<stem>`` as .nii.gz, .nii, .nrrd or .mha (the first that exists), or None."""
    folder = Path(folder)
    for suf in (".nii.gz", ".nii", ".nrrd", ".mha"):
        p = folder / f"{stem}{suf}"
        if p.exists():
            return p
    return None


def is_paired(folder) -> bool:
    """True if the case folder holds both an ``mr`` and a ``ct`` volume."""
    return bool(find_volume(folder, "mr") and find_volume(folder, "ct"))


def has_volume(folder) -> bool:
    """True if the case folder holds an ``mr`` or a ``ct`` volume (a case for unpaired training)."""
    return bool(find_volume(folder, "mr") or find_volume(folder, "ct"))


def find_cases(root, partial: bool = False) -> list[Path]:
    """Case folders under ``root`` holding both an ``mr`` and a ``ct`` volume, sorted by name.

    ``partial=True`` (unpaired training) also lists folders holding only one of them.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist.",
                         "point --data at a folder of <case>/mr.nii.gz + ct.nii.gz.")
    cases = sorted(p for p in root.iterdir() if p.is_dir()
                   and (is_paired(p) or (partial and has_volume(p))))
    if not cases:
        raise InputError(f"no cases found in {root}.",
                         "each case needs its own folder with mr.nii.gz and ct.nii.gz (try `mrtoct phantom --out "
                         "DIR`).")
    return cases


SPLIT_SUBSETS = ("train", "val", "test")


def make_split(cases, val: float = 0.1, test: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """Split case names (patients) at random into ``train``/``val``/``test`` lists (at least 1 train case).

    Fractions are rounded to whole cases; with 3+ cases, val and test each get at least one case when their
    fraction is positive. The same names and seed give the same split.
    """
    names = sorted(Path(c).name for c in cases)
    if not names:
        raise InputError("no cases to split.", "point --data at a folder of case folders.")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise InputError(f"split fractions val={val}, test={test} are not in [0, 1) with val + test < 1.",
                         "use e.g. val 0.1 and test 0.2.")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n = len(names)
    n_test = int(round(test * n)) or (1 if test > 0 and n >= 3 else 0)
    n_val = int(round(val * n)) or (1 if val > 0 and n >= 3 else 0)
    n_test, n_val = min(n_test, n - 1), min(n_val, max(0, n - 1 - n_test))
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def _check_case_name(name, where: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise InputError(f"{where}: case entry {name!r} is not a plain case-folder name.",
                         "list case folder names only (no paths, no '..'): cases must live directly in the data "
                         "folder.")
    return name


def read_split(path, root) -> dict[str, list[Path]]:
    """Read a split file (JSON or YAML ``{"train": [...], "val": [...], "test": [...]}`` of case names).

    Names must be plain folder names directly under ``root`` (no paths: a split file cannot point outside
    the data folder), each case in at most one subset, every listed case present: ``val`` and ``test`` cases
    with both volumes, ``train`` cases with at least one (single-modality cases are for unpaired methods).
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise InputError(f"split file {path} does not exist.",
                         "write one with `mrtoct split --data DIR --out split.json`.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise InputError(f"split file {path} cannot be parsed: {e}",
                         "write JSON like {\"train\": [\"case_000\"], ...}.") from e
    if not isinstance(doc, dict) or not set(doc) <= set(SPLIT_SUBSETS) or "train" not in doc:
        raise InputError(f"split file {path} must map 'train' (and optionally 'val', 'test') to lists of case names.",
                         "e.g. {\"train\": [\"case_000\", \"case_001\"], \"val\": [\"case_002\"], \"test\": "
                         "[\"case_003\"]}")
    out, seen = {}, {}
    for subset in SPLIT_SUBSETS:
        names = doc.get(subset) or []
        if not isinstance(names, list):
            raise InputError(f"split file {path}: '{subset}' is not a list.", "give a list of case folder names.")
        folders = []
        for name in names:
            _check_case_name(name, f"split file {path}")
            if name in seen:
                raise InputError(f"split file {path}: case {name!r} is in both '{seen[name]}' and '{subset}'.",
                                 "put each patient in exactly one subset (no leakage between train and test).")
            seen[name] = subset
            folder = root / name
            present = folder.is_dir() and (is_paired(folder) if subset != "train"
                                           else has_volume(folder))
            if not present:
                need = "mr and ct volumes" if subset != "train" else "an mr or ct volume"
                raise InputError(f"split file {path}: case {name!r} ({subset}) has no folder with {need} in {root}.",
                                 "fix the name, or regenerate the split for this data folder.")
            folders.append(folder)
        out[subset] = folders
    if not out["train"] and not out["test"]:
        raise InputError(f"split file {path} lists no cases.", "add case names to 'train' (and 'test').")
    return out


def write_split(split: dict[str, list], path) -> Path:
    """Write a split (names or folders per subset) as JSON, atomically."""
    doc = {k: [Path(c).name for c in split.get(k, [])] for k in SPLIT_SUBSETS}
    write_json(Path(path), doc)
    return Path(path)


def load_case(folder, register: bool = False, partial: bool = False) -> Case:
    """Read one case, checking that MR, CT (in HU) and mask share one grid.

    ``register=True`` first registers the MR to the CT (:func:`.registration.register`, its rigid default)
    and resamples it onto the CT grid, for cases whose MR is not aligned yet. ``partial=True`` accepts a
    case with only an MR or only a CT (the other is None; nothing to register).
    """
    folder = Path(folder)
    mr_path, ct_path = find_volume(folder, "mr"), find_volume(folder, "ct")
    if not partial or not (mr_path or ct_path):
        mr_path, ct_path = mr_path or folder / "mr.nii.gz", ct_path or folder / "ct.nii.gz"  # read_volume names it
    mr = read_volume(mr_path, f"{folder.name} MRI") if mr_path else None
    ct = read_volume(ct_path, f"{folder.name} CT") if ct_path else None
    if register and mr is not None and ct is not None:
        mr = register_pair(ct, mr).registered
    if mr is not None and ct is not None:
        require_same_geometry(mr, ct, f"{folder.name} MRI", f"{folder.name} CT")
    if ct is not None:
        check_ct_in_hu(ct.array, f"{folder.name} CT")
    mask_path = find_volume(folder, "mask")
    mask = read_volume(mask_path, f"{folder.name} mask") if mask_path else None
    if mask is not None:
        ref, what = (mr, "MRI") if mr is not None else (ct, "CT")
        require_same_geometry(ref, mask, f"{folder.name} {what}", f"{folder.name} mask")
    return Case(folder.name, mr, ct, mask)


def case_slices(case: Case, image_size: int, context: int = 0, body_only: bool = True,
                pixel_mm: float | None = None):
    """``(mr [N, 1+2c, H, W], ct [N, 1, H, W])`` model-range slices of one case (None for a missing modality).

    With ``body_only`` (and a mask), slices without any body voxel are dropped. With ``pixel_mm``, the slices
    are the whole canonical slice resampled to that pixel size (:func:`..io.slicing.to_physical_grid`, as
    inference does for a model with a recorded pixel size; H and W then depend on the case's field of view)
    instead of the square field of view resized to ``image_size``.
    """
    keep = None  # canonical slice indices with a body voxel (the mask shares the volumes' grid)
    if body_only and case.mask is not None:
        mask_c, mask_layout = to_canonical(case.mask.array, case.mask.geometry)
        keep = np.flatnonzero(mask_c.reshape(mask_layout.n_slices, -1).any(axis=1))

    def slices(arr, geometry, ctx):
        arr_c, layout = to_canonical(arr, geometry)
        indices = np.arange(layout.n_slices) if keep is None else keep
        if pixel_mm is not None:
            return to_physical_grid(arr_c, layout, plan_physical_grid(layout, pixel_mm), ctx, indices=indices)
        return to_model_grid(arr_c, layout, image_size, ctx, indices=indices)

    mr = ct = None
    if case.mr is not None:
        norm = MRNormalization.fit(case.mr.array, what=f"{case.name} MRI")
        mr = slices(norm.apply(case.mr.array.astype(np.float32)), case.mr.geometry, context)
    if case.ct is not None:
        ct = slices(hu_to_model(case.ct.array.astype(np.float32)), case.ct.geometry, 0)
    return mr, ct


#: bump when the slice preprocessing changes, so cached slices of an older engine are not reused
PREPROCESSING_VERSION = 1


def _cache_key(folder: Path, image_size: int, context: int, register: bool, pixel_mm: float | None = None) -> str:
    files = []
    for stem in ("mr", "ct", "mask"):
        p = find_volume(folder, stem)
        if p is not None:
            st = p.stat()
            files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    doc = {"files": files, "image_size": image_size, "context": context, "register": bool(register),
           "version": PREPROCESSING_VERSION}
    if pixel_mm is not None:
        doc["pixel_mm"] = float(pixel_mm)
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:32]


def load_case_slices(folder, image_size: int, context: int = 0, cache_dir=None,
                     register: bool = False, partial: bool = False,
                     pixel_mm: float | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`case_slices` of the case in ``folder``, through an on-disk cache when ``cache_dir`` is given.

    ``partial=True`` accepts a single-modality case (:func:`load_case`) and returns None for the missing one.

    The cache file is named by a hash of the volumes' paths, sizes and modification times, the model grid,
    the context and the registration flag, so editing a volume or changing a setting never reuses stale
    slices; it is written atomically, and an unreadable cache file is recomputed.
    """
    folder = Path(folder)
    path = None
    if cache_dir is not None:
        key = _cache_key(folder, image_size, context, register, pixel_mm)
        path = Path(cache_dir) / f"{folder.name}-{key}.safetensors"
        if path.exists():
            try:
                t = load_file(str(path))
                if ("mr" in t and "ct" in t) or partial:
                    return t.get("mr"), t.get("ct")
            except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt below
                pass
    mr, ct = case_slices(load_case(folder, register=register, partial=partial), image_size, context, pixel_mm=pixel_mm)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, suffix=".safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in (("mr", mr), ("ct", ct)) if v is not None}, str(tmp))
        except OSError as e:  # a read-only cache folder slows the next run down but must not stop this one
            print(f"note: could not write the slice cache {path} ({e}); continuing without it", file=sys.stderr)
    return mr, ct


class SliceDataset:
    """All slices of a set of cases in memory, with reproducible random mini-batches."""

    def __init__(self, mr: torch.Tensor, ct: torch.Tensor, case_names: list[str]):
        if len(mr) != len(ct) or len(mr) == 0:
            raise InputError("the training data has no slices.", "check the cases and their body masks.")
        self.mr, self.ct, self.case_names = mr, ct, case_names

    @classmethod
    def from_folders(cls, folders, image_size: int, context: int = 0, cache_dir=None,
                     register: bool = False) -> "SliceDataset":
        mrs, cts, names = [], [], []
        for f in folders:
            m, c = load_case_slices(f, image_size, context, cache_dir=cache_dir, register=register)
            mrs.append(m)
            cts.append(c)
            names.append(Path(f).name)
        return cls(torch.cat(mrs), torch.cat(cts), names)

    def __len__(self) -> int:
        return len(self.mr)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return self.mr[idx], self.ct[idx]


class PatchDataset:
    """Paired slices at a physical pixel size, served as random square patches (fully convolutional training).

    Each case keeps its own canvas size (its field of view at ``pixel_mm``, :func:`case_slices`). A batch draws
    slices uniformly over all cases' slices and, per slice, a patch of ``patch`` x ``patch`` pixels whose centre
    lies in the body's bounding box on that slice (CT above -500 HU) with probability ``body_fraction``
    (anywhere on the canvas otherwise); the canvas is padded with the background (-1) where the patch leaves
    it. ``augment`` (:func:`.augment.build_augmentation`) transforms each patch pair on the fly. All draws come
    from the generator passed to :meth:`batch` and torch's global generator, which the training loop seeds per
    step, so a run is reproducible.
    """

    unpaired = False

    def __init__(self, mrs: list[torch.Tensor], cts: list[torch.Tensor], case_names: list[str], patch: int,
                 augment=None, body_fraction: float = 0.9):
        if not mrs or sum(len(m) for m in mrs) == 0:
            raise InputError("the training data has no slices.", "check the cases and their body masks.")
        self.mrs = [m.contiguous() for m in mrs]
        self.cts = [c.contiguous() for c in cts]
        self.case_names, self.patch, self.augment = list(case_names), int(patch), augment
        self.body_fraction = float(body_fraction)
        self.index = torch.cat([torch.stack([torch.full((len(m),), i), torch.arange(len(m))], 1)
                                for i, m in enumerate(self.mrs)])  # [N, 2]: (case, slice)
        boxes = []
        level = float(hu_to_model(np.float32(-500.0)))
        for c in self.cts:
            body = c[:, 0] > level
            rows, cols = body.any(dim=2), body.any(dim=1)
            for r, q in zip(rows, cols):
                rr, cc = torch.nonzero(r).flatten(), torch.nonzero(q).flatten()
                if len(rr) == 0:
                    boxes.append((0, c.shape[2] - 1, 0, c.shape[3] - 1))
                else:
                    boxes.append((int(rr[0]), int(rr[-1]), int(cc[0]), int(cc[-1])))
        self.boxes = torch.tensor(boxes, dtype=torch.long)

    @classmethod
    def from_folders(cls, folders, pixel_mm: float, patch: int, context: int = 0, cache_dir=None,
                     register: bool = False, augment=None) -> "PatchDataset":
        mrs, cts, names = [], [], []
        for f in folders:
            m, c = load_case_slices(f, patch, context, cache_dir=cache_dir, register=register, pixel_mm=pixel_mm)
            mrs.append(m)
            cts.append(c)
            names.append(Path(f).name)
        return cls(mrs, cts, names, patch, augment=augment)

    @property
    def mr(self):  # sizes for the training log (slices per modality)
        return self.index

    @property
    def ct(self):
        return self.index

    def __len__(self) -> int:
        return len(self.index)

    def _crop(self, img: torch.Tensor, y0: int, x0: int) -> torch.Tensor:
        p = self.patch
        h, w = img.shape[-2:]
        ya, xa = max(0, y0), max(0, x0)
        yb, xb = min(h, y0 + p), min(w, x0 + p)
        out = torch.full(img.shape[:-2] + (p, p), -1.0, dtype=img.dtype)
        if yb > ya and xb > xa:
            out[..., ya - y0:yb - y0, xa - x0:xb - x0] = img[..., ya:yb, xa:xb]
        return out

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(0, len(self), (batch_size,), generator=generator)
        u = torch.rand(batch_size, 3, generator=generator)
        mrs, cts = [], []
        for j, n in enumerate(pick.tolist()):
            case, k = (int(v) for v in self.index[n])
            mr, ct = self.mrs[case][k], self.cts[case][k]
            h, w = mr.shape[-2:]
            if u[j, 0] < self.body_fraction:
                y0, y1, x0, x1 = (int(v) for v in self.boxes[n])
            else:
                y0, y1, x0, x1 = 0, h - 1, 0, w - 1
            cy = y0 + int(u[j, 1] * (y1 - y0 + 1))
            cx = x0 + int(u[j, 2] * (x1 - x0 + 1))
            top, left = cy - self.patch // 2, cx - self.patch // 2
            m, c = self._crop(mr, top, left), self._crop(ct, top, left)
            if self.augment is not None:
                m, c = self.augment(m, c)
            mrs.append(m)
            cts.append(c)
        return torch.stack(mrs).float(), torch.stack(cts).float()

    def fixed_batch(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` patches drawn with a fixed seed and without augmentation (validation)."""
        aug, self.augment = self.augment, None
        try:
            return self.batch(n, torch.Generator().manual_seed(int(seed)))
        finally:
            self.augment = aug


class UnpairedSliceDataset:
    """MR slices and CT slices as two independent pools, for unpaired training (``syndiff``, ``cyclegan``).

    :meth:`batch` draws the MR indices and the CT indices with two separate random draws, so the i-th MR
    and the i-th CT of a batch are unrelated even when both pools come from the same cases (slices are never
    paired by index). :meth:`from_folders` accepts cases holding only an MR or only a CT (each feeds its
    pool); with ``disjoint_cases=True`` it goes further and takes the MR of every other paired case and the
    CT of the remaining ones, so no anatomy appears in both pools.
    """

    unpaired = True

    def __init__(self, mr: torch.Tensor, ct: torch.Tensor, case_names: list[str] | None = None):
        if len(mr) == 0 or len(ct) == 0:
            raise InputError("the unpaired training data has no MR or no CT slices.",
                             "check the cases and their masks.")
        self.mr, self.ct, self.case_names = mr, ct, list(case_names or [])

    @classmethod
    def from_paired(cls, paired: SliceDataset) -> "UnpairedSliceDataset":
        """Both pools of a paired dataset, sampled independently (the pairing is not used)."""
        return cls(paired.mr, paired.ct, paired.case_names)

    @classmethod
    def from_folders(cls, folders, image_size: int, context: int = 0, disjoint_cases: bool = False,
                     cache_dir=None, register: bool = False) -> "UnpairedSliceDataset":
        folders = list(folders)
        if disjoint_cases and len(folders) < 2:
            raise InputError("disjoint unpaired pools need at least two cases.", "add cases or drop disjoint_cases.")
        mrs, cts, names = [], [], []
        n = 0  # alternates over the paired cases; single-modality cases feed their own pool
        for f in folders:
            m, c = load_case_slices(f, image_size, context, cache_dir=cache_dir, register=register, partial=True)
            both = m is not None and c is not None
            if m is not None and (not disjoint_cases or not both or n % 2 == 0):
                mrs.append(m)
            if c is not None and (not disjoint_cases or not both or n % 2 == 1):
                cts.append(c)
            n += both
            names.append(Path(f).name)
        if not mrs or not cts:
            what = "MR" if not mrs else "CT"
            if disjoint_cases:
                raise InputError(f"with disjoint_cases the {what} pool is empty: the paired cases alternate between "
                                 f"the pools, and no single-modality case supplies {what}.",
                                 f"drop disjoint_cases, or add cases with {what.lower()}.nii.gz.")
            raise InputError(f"the unpaired training cases hold no {what} volume.",
                             "add cases with an mr.nii.gz and cases with a ct.nii.gz (they need not be paired).")
        return cls(torch.cat(mrs), torch.cat(cts), names)

    def __len__(self) -> int:
        return max(len(self.mr), len(self.ct))

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mr, ct)`` of ``batch_size`` slices each, drawn independently of each other."""
        i_mr = torch.randint(0, len(self.mr), (batch_size,), generator=generator)
        i_ct = torch.randint(0, len(self.ct), (batch_size,), generator=generator)
        return self.mr[i_mr], self.ct[i_ct]
