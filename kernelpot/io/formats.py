"""Read and write labelled frames; the one place that knows file formats and units.

Every reader returns a list of :class:`ase.Atoms` whose labels (total energy,
forces, stress) sit in a :class:`~ase.calculators.singlepoint.SinglePointCalculator`,
so ``atoms.get_potential_energy()``, ``atoms.get_forces()`` and
``atoms.get_stress()`` return them in kernelpot's internal units. The group a
structure belongs to is ``atoms.info["config_type"]`` (a ``str``) when the
source has one.

Supported inputs
----------------
- extended XYZ (``.xyz``/``.extxyz``), with labels as ``energy=``, ``stress=``
  or ``virial=`` on the comment line and a ``forces`` column;
- ASE databases (``.db``, ASE-style ``.json``): key-value pairs go to ``info``;
- the mlearn/maml JSON format (Zuo et al., J. Phys. Chem. A 124, 731 (2020)):
  a JSON list of dicts with ``"structure"`` (a pymatgen ``Structure`` as a
  dict) and ``"outputs"``; read without pymatgen; only ordered structures
  (one element at ``occu`` 1 per site): a partially occupied or disordered
  site is a ValueError naming the file, frame and site, as is a record whose
  ``num_atoms`` differs from the number of ``structure.sites``;
- anything else :func:`ase.io.read` understands (OUTCAR, vasprun.xml, ...).

Units and conventions
---------------------
Internally: positions Å, energy eV (total), forces eV/Å, stress eV/Å^3 in
ASE's convention, Voigt order ``xx yy zz yz xz xy``,
``stress = (1/V) dE/d(strain)``, so a compressed cell has *negative* stress.
Every conversion kernelpot applies is in this table and nowhere else:

=========================  ===========================  =======================================
source field               source unit / convention     conversion to kernelpot
=========================  ===========================  =======================================
extxyz ``energy``          eV, total                    none (``info`` -> calculator)
extxyz ``forces``          eV/Å                         none (``arrays`` -> calculator)
extxyz ``stress``          eV/Å^3, ASE sign, 3x3        3x3 -> Voigt ``xx yy zz yz xz xy``
                           (9 values; a Voigt 6-vector
                           under another key, e.g.
                           ``REF_stress``)
extxyz ``virial``          eV, ``virial = -V stress``   ``stress = -virial / V``, V in Å^3
mlearn ``lattice.matrix``  Å, rows = lattice vectors    none
mlearn ``sites[].xyz``     Å, Cartesian                 none
mlearn ``energy``          eV, total                    none
mlearn ``forces``          eV/Å                         none
mlearn ``virial_stress``   kBar, VASP order             ``stress[v] = -KBAR * virial_stress[o]``
                           ``xx yy zz xy yz zx``, VASP  ``KBAR = 0.1 * ase.units.GPa`` eV/Å^3,
                           sign (+ = compressive)       ``o = MLEARN_TO_ASE_VOIGT[v]``
                                                        ``= (0, 1, 2, 4, 5, 3)[v]``
=========================  ===========================  =======================================

``1 eV/Å^3 = 160.21766208 GPa`` (``ase.units.GPa``); GPa is for display only.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import all_properties
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from kernelpot.io.files import atomic_write, check_writable
from kernelpot.io.labels import (ENERGY_KEYS, FORCES_KEYS, NOISE_KEYS, STRESS_KEYS, VIRIAL_KEYS,
                                 DataWarning, _list, looks_like_label, stress_asymmetry)

__all__ = ["read", "write", "mlearn_stress_to_ase", "KBAR", "MLEARN_TO_ASE_VOIGT"]

#: One kilobar in eV/Å^3 (1 kBar = 0.1 GPa).
KBAR: float = 0.1 * units.GPa

#: Position in VASP/mlearn order (xx yy zz xy yz zx) of each ASE Voigt component
#: (xx yy zz yz xz xy).
MLEARN_TO_ASE_VOIGT: tuple[int, ...] = (0, 1, 2, 4, 5, 3)

# Keys written by the extxyz writer itself; user data must not shadow them.
_RESERVED_INFO = {"energy", "free_energy", "stress", "virial", "Lattice", "Properties", "pbc"}
_RESERVED_ARRAYS = {"positions", "numbers", "species", "pos", "symbols", "forces", "energies",
                    "charges", "magmoms", "move_mask"}

PathLike = str | os.PathLike


def read(path: PathLike, index: int | slice | str = ":", format: str | None = None,
         energy_key: str | None = None, forces_key: str | None = None,
         stress_key: str | None = None) -> list[Atoms]:
    """Read labelled frames from a file.

    Parameters
    ----------
    path : str or path-like
        File to read. The format is guessed from the content and extension
        unless ``format`` is given.
    index : int, slice or str, default ":"
        Which frames to return, as in :func:`ase.io.read` (``":"``, ``"-1"``,
        ``"10:20"``, ``3``, ``slice(0, 5)``).
    format : str, optional
        ``"mlearn"`` for the mlearn/maml JSON format, ``"db"`` for an ASE
        database, or any :func:`ase.io.read` format name (``"extxyz"``,
        ``"vasp-out"``, ...). ``None`` detects it.
    energy_key, forces_key, stress_key : str, optional
        Where the reference labels are: an ``info`` key (energy, stress) or an
        ``arrays`` column (forces), e.g. ``energy_key="REF_energy"``,
        ``forces_key="REF_forces"``, ``stress_key="REF_virial"`` (a key whose
        name contains ``virial`` is a virial in eV, converted to stress).
        ``energy_key="free_energy"`` fits the free energy explicitly.  A key
        given here must be present in every frame.  ``None``: the standard
        name (``energy``/``free_energy``, ``forces``, ``stress``/``virial``),
        else the first common convention present
        (:data:`kernelpot.io.labels.ENERGY_KEYS` etc.: ``REF_*``, ``DFT_*``,
        ``dft_*``, ...).  Any other key that looks like a label and is not used
        is named in a :class:`~kernelpot.io.labels.DataWarning`, as are labels
        taken from different conventions in one frame.

    Returns
    -------
    list of ase.Atoms
        Always a list, also for an integer ``index``. Labels are in a
        ``SinglePointCalculator`` in eV, eV/Å and eV/Å^3 (ASE stress
        convention, Voigt ``xx yy zz yz xz xy``); see the module docstring for
        the conversions applied. ``info["config_type"]`` is a ``str`` when the
        source has a group (extxyz ``config_type``, mlearn ``group``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (a misspelt ``.db`` name is not created).
    ValueError
        If the file is a JSON list that is not in the mlearn format, is not
        valid JSON (truncated), a field of a frame has the wrong type or shape,
        an mlearn record's ``num_atoms`` differs from its number of sites,
        a given label key is missing from a frame, or a frame has a ``virial``
        but no cell volume to divide it by; every message names the file, the
        frame index and the field.

    Examples
    --------
    >>> frames = read("data/emt_cu_train.xyz")              # doctest: +SKIP
    >>> frames[0].get_stress()                               # doctest: +SKIP
    """
    path = Path(path)
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
    for what, key in keys.items():
        if key is not None and not (isinstance(key, str) and key):
            raise TypeError(f"{what}_key must be a non-empty str or None, got {key!r}")
    # checked here: ase.db.connect would create a missing database file and read nothing from it
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    _check_container(path)
    if format is None:
        format = _detect_format(path)
    if format == "mlearn":
        if any(k is not None for k in keys.values()):
            raise ValueError(f"{path}: energy_key/forces_key/stress_key do not apply to the mlearn format "
                             f"(its labels are outputs.energy, outputs.forces, outputs.virial_stress)")
        return _read_mlearn(path, index)
    if format in ("db", "json"):
        frames = _read_ase_db(path, index)
    else:
        import ase.io  # ase.io and ase.db take ~0.4 s to import: loaded when a file is read
        try:
            images = ase.io.read(path, index=index, format=format)
        except (FileNotFoundError, PermissionError, IsADirectoryError, TypeError):
            raise
        except Exception as exc:  # ASE's parsers raise many types; say which file, keep the cause
            if path.is_dir():  # ASE tried it as a BundleTrajectory (its one folder format)
                raise ValueError(f"{path}: is a folder, not a file of structures (extxyz, ASE db, mlearn JSON, or "
                                 f"any file ASE reads)") from exc
            symbol = _unknown_symbol(path, exc)
            if symbol:
                raise ValueError(f"{path}: {symbol}") from exc
            hint = ""
            # ASE's extxyz reader: Lattice=, stress= and virial= must hold 9 values ("Got info item <key>, ...")
            item = re.search(r"info item (\S+?),? expecting special 3x3", str(exc))
            if item and item.group(1).lower() in ("stress", "virial"):
                hint = ("; extxyz keeps stress= and virial= as 3x3 (9 values): store a Voigt 6-vector under "
                        "another key, e.g. REF_stress=, which kernelpot reads as the stress label")
            elif item and item.group(1) == "Lattice":
                hint = "; Lattice= holds the three cell vectors, 9 numbers in one quoted string"
            raise ValueError(f"{path}: {_where_reading_stops(path, format)}cannot be read as "
                             f"{format or 'a format ASE recognises'} ({type(exc).__name__}: {exc}){hint}") from exc
        frames = [images] if isinstance(images, Atoms) else list(images)
        _check_xyz_text(path, format, len(frames) if index in (":", slice(None)) else None)
    unused: dict[str, list[int]] = {}
    mixed: dict[str, list[int]] = {}
    sources: dict[str, dict[str, list[int]]] = {}
    conflicts: dict[str, list] = {}
    out = [_attach_labels(atoms, i, path, keys, unused, mixed, sources, conflicts) for i, atoms in enumerate(frames)]
    _warn_keys(path, unused, mixed, len(out), sources, conflicts)
    return out


def write(
    path: PathLike,
    frames: Atoms | Sequence[Atoms],
    per_atom: Mapping[str, Any] | None = None,
    per_frame: Mapping[str, Any] | None = None,
    append: bool = False,
) -> None:
    """Write frames and their labels to an extended XYZ file.

    The energy, forces and stress in each frame's calculator are written as
    ``energy=``, ``stress=`` (3x3, eV/Å^3) and a ``forces`` column, so that
    :func:`read` gives them back. ``info`` and extra ``arrays`` of the frames
    are written as well. The frames are not modified.

    Parameters
    ----------
    path : str or path-like
        Output file.
    frames : ase.Atoms or sequence of ase.Atoms
        Frames to write.
    per_atom : mapping of str to array, optional
        Extra per-atom columns, e.g. ``{"forces_std": pred["forces_std"]}``.
        Each value is either one array of shape ``(n_atoms_total, ...)`` with
        the atoms of all frames concatenated in order (the layout of
        ``SparseGP.predict``), or a list with one ``(n_atoms, ...)`` array per
        frame.
    per_frame : mapping of str to array, optional
        Extra per-frame values, e.g. ``{"energy_std": pred["energy_std"]}``:
        an array of shape ``(n_frames, ...)`` or a list of ``n_frames`` values.
        Written to the comment line.
    append : bool, default False
        Append to ``path`` instead of overwriting it.

    Raises
    ------
    ValueError
        If the folder of ``path`` does not exist or is not writable (checked
        before any work), an extra name clashes with a label or structure
        field, a length does not match, or a frame's calculator results are
        stale (the atoms moved after the labels were attached).

    Notes
    -----
    The file is written to a temporary file beside ``path`` and renamed into
    place (:func:`kernelpot.io.files.atomic_write`): a write that fails part-way
    leaves the previous file intact.

    Examples
    --------
    >>> write("pred.xyz", frames, per_atom={"forces_std": pred["forces_std"]},
    ...       per_frame={"energy_std": pred["energy_std"]})  # doctest: +SKIP
    """
    path = check_writable(path)
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    n_atoms = [len(atoms) for atoms in frames]
    split_atoms = np.cumsum(n_atoms)[:-1]

    out = []
    for i, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"frame {i}: expected ase.Atoms, got {type(atoms).__name__}")
        copy = atoms.copy()
        results = _stored_results(atoms, i)
        if results:
            copy.calc = SinglePointCalculator(copy, **results)
        out.append(copy)

    for name, values in (per_atom or {}).items():
        if name in _RESERVED_ARRAYS:
            raise ValueError(f"per_atom: name {name!r} is reserved for positions/labels; "
                             f"choose another name (e.g. {name + '_pred'!r})")
        if isinstance(values, np.ndarray):
            if values.shape[0] != sum(n_atoms):
                raise ValueError(f"per_atom[{name!r}] has shape {values.shape}, expected first "
                                 f"dimension n_atoms_total={sum(n_atoms)}")
            values = np.split(values, split_atoms) if frames else []
        if len(values) != len(frames):
            raise ValueError(f"per_atom[{name!r}] has {len(values)} entries, expected one per "
                             f"frame ({len(frames)})")
        for i, (copy, value) in enumerate(zip(out, values)):
            value = np.asarray(value)
            if value.shape[:1] != (len(copy),):
                raise ValueError(f"frame {i}: per_atom[{name!r}] has shape {value.shape}, "
                                 f"expected ({len(copy)}, ...)")
            copy.arrays[name] = value.copy()

    for name, values in (per_frame or {}).items():
        if name in _RESERVED_INFO:
            raise ValueError(f"per_frame: name {name!r} is reserved for labels/cell; "
                             f"choose another name (e.g. {name + '_pred'!r})")
        if len(values) != len(frames):
            raise ValueError(f"per_frame[{name!r}] has {len(values)} entries, expected one per "
                             f"frame ({len(frames)})")
        for copy, value in zip(out, values):
            value = np.asarray(value)
            copy.info[name] = value.item() if value.ndim == 0 else value.copy()

    import shutil
    import ase.io
    # atomic: a failure part-way leaves the previous file (and, appending, its frames) intact
    with atomic_write(path, suffix=".xyz") as tmp:
        if append and path.is_file():
            shutil.copyfile(path, tmp)
        ase.io.write(tmp, out, format="extxyz", append=append)


# --------------------------------------------------------------------------- helpers


def _detect_format(path: Path) -> str | None:
    """Formats handled here: mlearn JSON (a list) and ASE databases (.db, ASE's dict-style .json).

    ``None`` leaves the guess to :func:`ase.io.read`.
    """
    suffix = path.suffix.lower()
    if suffix == ".db":
        return "db"
    if suffix == ".json":
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096).lstrip()
        return "mlearn" if head.startswith("[") else "db"
    return None


def _index_list(n: int, index: int | slice | str) -> list[int]:
    if isinstance(index, str):
        from ase.io.formats import string2index
        index = string2index(index)
    if isinstance(index, int):
        return [range(n)[index]]
    return list(range(n))[index]


def _read_mlearn(path: Path, index: int | slice | str) -> list[Atoms]:
    """Read the mlearn/maml JSON format without pymatgen (see the module table)."""
    with open(path, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} "
                             f"({exc.msg}); is the file truncated?") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: not in the mlearn format (expected a JSON list of dicts "
                         f"with 'structure' and 'outputs' keys, got a {type(data).__name__})")
    for i, d in enumerate(data):
        if not (isinstance(d, dict) and "structure" in d and "outputs" in d):
            raise ValueError(f"{path}: frame {i}: not in the mlearn format (expected a dict with "
                             f"'structure' and 'outputs' keys, got {_short(d)})")
    frames = []
    ignored: dict[str, list[int]] = {}
    for i in _index_list(len(data), index):
        frames.append(_mlearn_item_to_atoms(data[i], i, path))
        for key, value in data[i]["outputs"].items():
            if key not in _MLEARN_OUTPUTS and value is not None:
                ignored.setdefault(key, []).append(i)
    if ignored:  # e.g. outputs.stress or outputs.energy_per_atom: dropped unseen before
        names = ", ".join(f"outputs.{k} ({len(v)} of {len(frames)} frames)" for k, v in ignored.items())
        warnings.warn(f"{path}: {names} not read: mlearn labels are outputs.energy (eV, total), outputs.forces "
                      "(eV/Å) and outputs.virial_stress (kBar, VASP order); rename the field if it holds one",
                      DataWarning, stacklevel=3)
    return frames


#: The outputs fields of the mlearn format that hold labels kernelpot reads.
_MLEARN_OUTPUTS = ("energy", "forces", "virial_stress")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _field(where: str, name: str, value: Any, shape: tuple | None, unit: str) -> np.ndarray:
    """``value`` as a float array of ``shape`` (-1: any length), or a ValueError naming the field."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} = {_short(value)} is not numeric (expected {unit})") from None
    if isinstance(value, str):
        raise ValueError(f"{where}: {name} = {value!r} is a string, expected a number ({unit})")
    if shape is not None and (arr.ndim != len(shape)
                              or any(s != -1 and s != a for s, a in zip(shape, arr.shape))):
        want = "(" + ", ".join("n" if s == -1 else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{where}: {name} has shape {arr.shape}, expected {want} ({unit})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: {name} is not finite (NaN/inf)")
    return arr


def _mlearn_item_to_atoms(item: dict, i: int, path: Path) -> Atoms:
    where = f"{path}: frame {i}"
    structure, outputs = item["structure"], item["outputs"]
    if not isinstance(structure, dict):
        raise ValueError(f"{where}: structure is {_short(structure)}, expected a pymatgen Structure dict")
    if not isinstance(outputs, dict):
        raise ValueError(f"{where}: outputs is {_short(outputs)}, expected a dict")
    try:
        matrix = structure["lattice"]["matrix"]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: structure.lattice.matrix is missing") from None
    cell = _field(where, "structure.lattice.matrix", matrix, (3, 3), "Å, rows = lattice vectors")
    sites = structure.get("sites")
    if not isinstance(sites, list):
        raise ValueError(f"{where}: structure.sites is {_short(sites)}, expected a list of sites")
    _check_num_atoms(where, item.get("num_atoms"), len(sites))
    symbols, positions = [], []
    for k, site in enumerate(sites):
        try:
            species = site["species"]
            symbols.append(str(species[0]["element"]))
            xyz = site["xyz"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{where}: structure.sites[{k}] has no species[0].element or xyz") from None
        _check_full_occupancy(where, k, species)
        positions.append(_field(where, f"structure.sites[{k}].xyz", xyz, (3,), "Å, Cartesian"))
    try:
        atoms = Atoms(symbols=symbols, positions=np.reshape(positions, (-1, 3)), cell=cell, pbc=True)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{where}: structure.sites: {exc}") from None

    for key, value in item.items():
        if key in ("structure", "outputs"):
            continue
        if key == "group":
            atoms.info["config_type"] = str(value)
        elif isinstance(value, (str, int, float, bool)):
            atoms.info[key] = value
        else:
            atoms.info[key] = json.dumps(value)

    results: dict[str, Any] = {}
    if outputs.get("energy") is not None:
        results["energy"] = float(_field(where, "outputs.energy", outputs["energy"], (), "eV, total"))
    if outputs.get("forces") is not None:
        results["forces"] = _field(where, "outputs.forces", outputs["forces"], (len(atoms), 3), "eV/Å")
    if outputs.get("virial_stress") is not None:
        v = _field(where, "outputs.virial_stress", outputs["virial_stress"], (6,),
                   "kBar, VASP order xx yy zz xy yz zx")
        results["stress"] = mlearn_stress_to_ase(v)
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _check_num_atoms(where: str, num_atoms: Any, n_sites: int) -> None:
    """A ValueError unless the record's ``num_atoms`` (when present) equals the number of sites.

    mlearn records carry ``num_atoms`` beside the structure; a record where the two
    disagree was cut or edited by hand (sites lost or duplicated), so which of the two
    is right cannot be told and the frame's labels may belong to another structure.
    """
    if num_atoms is None:
        return
    name = "num_atoms"
    integral = (isinstance(num_atoms, int) and not isinstance(num_atoms, bool)) or (
        isinstance(num_atoms, float) and num_atoms.is_integer())
    if not integral:
        raise ValueError(f"{where}: {name} = {_short(num_atoms)} is not an integer "
                         f"(expected the number of sites, {n_sites})")
    if int(num_atoms) != n_sites:
        raise ValueError(f"{where}: {name} = {int(num_atoms)} but structure.sites has {n_sites} sites; "
                         "the record is inconsistent (sites lost or duplicated?)")


def _check_full_occupancy(where: str, k: int, species: Any) -> None:
    """A ValueError unless the site holds exactly one element at occupancy 1.

    A pymatgen site with several ``species`` entries, or with an ``occu`` other
    than 1, is a disordered (partially occupied) site. An atomistic model needs
    one atom per site, so such a structure cannot be read as a configuration;
    taking ``species[0]`` would silently invent a different material.
    A missing ``occu`` is taken as 1 (pymatgen's ordered-site default).
    """
    name = f"structure.sites[{k}].species"
    if not isinstance(species, list):
        raise ValueError(f"{where}: {name} = {_short(species)}, expected a list of {{element, occu}}")
    occus = []
    for entry in species:
        occu = entry.get("occu", 1) if isinstance(entry, dict) else None
        try:
            occus.append(float(occu))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {name} = {_short(species)}: occu {occu!r} is not a number") from None
    if len(species) != 1 or not abs(occus[0] - 1.0) <= 1e-6:
        desc = ", ".join(f"{e.get('element', '?') if isinstance(e, dict) else '?'}:{o:g}"
                         for e, o in zip(species, occus))
        raise ValueError(f"{where}: {name} is partially occupied or disordered (element:occu = {desc}); "
                         "only ordered structures with one element at occupancy 1 per site can be read")


def mlearn_stress_to_ase(virial_stress: Sequence[float]) -> np.ndarray:
    """Convert an mlearn ``virial_stress`` to ASE stress.

    Parameters
    ----------
    virial_stress : sequence of 6 float
        kBar, VASP order ``xx yy zz xy yz zx``, positive = compressive.

    Returns
    -------
    numpy.ndarray, shape (6,)
        eV/Å^3, ASE Voigt order ``xx yy zz yz xz xy``, compressed cell negative.
    """
    v = np.asarray(virial_stress, dtype=float)
    if v.shape != (6,):
        raise ValueError(f"virial_stress has shape {v.shape}, expected (6,)")
    return -KBAR * v[list(MLEARN_TO_ASE_VOIGT)]


def _read_ase_db(path: Path, index: int | slice | str) -> list[Atoms]:
    """Read an ASE database; key-value pairs go to ``info`` and the row id to ``info['db_id']``."""
    import ase.db
    try:
        with ase.db.connect(str(path)) as db:
            rows = list(db.select())
    except Exception as exc:  # a JSON object that is no ASE database, a truncated or foreign file
        raise ValueError(f"{path}: cannot be read as an ASE database ({type(exc).__name__}: {exc}); mlearn "
                         "files are a JSON list of {structure, outputs} objects") from exc
    frames = []
    for i in _index_list(len(rows), index):
        row = rows[i]
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        # arrays kept in the row's data (the usual place for per-atom labels: db.write(atoms,
        # data={"dft_forces": f})) join the frame's arrays, scalars and other arrays its info, so
        # that the label search and its warnings see them instead of dropping them unseen
        for key, value in (row.get("data") or {}).items():
            arr = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
            if arr is not None and arr.ndim >= 1 and len(arr) == len(atoms) and key not in atoms.arrays:
                atoms.new_array(key, arr)
            elif key not in atoms.info:
                atoms.info[key] = value
        atoms.info["db_id"] = row.id
        frames.append(atoms)
    return frames


def _to_voigt(stress: Any, what: str) -> np.ndarray:
    s = np.asarray(stress, dtype=float)
    if s.shape == (9,):
        s = s.reshape(3, 3)
    if s.shape == (3, 3):
        asym = stress_asymmetry(s)
        if asym is not None:
            raise ValueError(f"{what}: {asym}")
        return full_3x3_to_voigt_6_stress(s)
    if s.shape == (6,):
        return s
    raise ValueError(f"{what} has shape {s.shape}, expected (6,), (9,) or (3, 3)")


def _check_xyz_text(path: Path, format: str | None, n_read: int | None) -> None:
    """After ASE has read an (ext)xyz file, one walk over its text (:func:`_xyz_layout`) for what ASE lets pass.

    Raises if a ``stress=`` or ``virial=`` 3x3 on an extxyz comment line is not symmetric (ASE's reader
    keeps one triangle of these and drops the other without a word; only the comment lines are parsed),
    and, given ``n_read`` (the frames ASE returned for the whole file), if the file holds more frames
    (ASE's reader stops at a blank line between frames).
    """
    from ase.io.formats import filetype
    counted = n_read is not None and (format or filetype(str(path), read=False)) in ("extxyz", "xyz")
    try:
        tensors = (format or filetype(str(path), guess=False)) == "extxyz"
    except Exception:  # ASE cannot tell: not an extxyz file, no tensors to check
        tensors = False
    if not (counted or tensors):
        return
    from ase.io.extxyz import key_val_str_to_dict
    keys = {k.lower() for k in STRESS_KEYS + VIRIAL_KEYS}

    def check_tensors(frame, comment):
        if "=" in comment and any(k in comment.lower() for k in keys):
            try:
                info = key_val_str_to_dict(comment)
            except Exception:
                info = {}
            for key, value in info.items():
                asym = stress_asymmetry(value) if key.lower() in keys else None
                if asym is not None:
                    raise ValueError(f"{path}: frame {frame}: {key}: {asym} (extxyz writes the 9 values "
                                     f"column by column; ASE would keep one triangle of it)")

    n_text, blanks, broken = _xyz_layout(path, check_tensors if tensors else None)
    if counted and not broken and n_read < n_text:
        at = f" at the blank line {blanks[0]}" if blanks else ""
        raise ValueError(f"{path}: ASE's reader stopped{at} and read {n_read} of the file's {n_text} frames "
                         "(blank lines between frames end an xyz file for it); remove the blank line(s)")


def _what(value) -> str:
    """A value described for a message: its shape if it is an array (not its thousand numbers), else its repr."""
    shape = np.shape(value) if isinstance(value, (np.ndarray, list, tuple)) else ()
    if shape:
        return f"an array of shape {shape}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _take(atoms: Atoms, results: dict, key: str, where: str):
    """The value stored under ``key``: calculator results, then ``info``, then ``arrays`` (removed there)."""
    if key in results and results[key] is not None:
        return results.pop(key)
    if key in atoms.info:
        return atoms.info.pop(key)
    if key in atoms.arrays and key not in ("positions", "numbers"):
        return atoms.arrays.pop(key)
    return None


def _first_present(atoms: Atoms, results: dict, candidates) -> str | None:
    for key in candidates:
        if results.get(key) is not None or key in atoms.info or key in atoms.arrays:
            return key
    return None


def _attach_labels(atoms: Atoms, i: int, path: Path, keys: Mapping[str, str | None] | None = None,
                   unused: dict | None = None, mixed: dict | None = None,
                   sources: dict | None = None, conflicts: dict | None = None) -> Atoms:
    """Move energy/forces/stress/virial from info/arrays into a SinglePointCalculator.

    ``keys`` are the user's ``energy_key``/``forces_key``/``stress_key``
    (``None``: the standard name, else the first convention present); keys
    that look like labels and are not used are recorded in ``unused``
    (key -> frames), frames whose labels come from different conventions in
    ``mixed``, a virial beside the stress that disagrees with it in ``conflicts``
    (key -> [(frame, largest difference in GPa)]).
    """
    keys = keys or {}
    where = f"{path}: frame {i}"
    results = _stored_results(atoms, i) if atoms.calc is not None else {}
    used = {}

    def resolve(what, candidates):
        key = keys.get(what)
        if key is None:
            return _first_present(atoms, results, candidates), False
        return key, True

    # energy: a given key replaces both standard energies (they are then "not used")
    key, explicit = resolve("energy", ("free_energy",) + ENERGY_KEYS)
    if key is not None:
        if explicit or key not in ("energy", "free_energy"):
            value = _take(atoms, results, key, where)
            if value is None:
                raise ValueError(f"{where}: energy_key={key!r} is not in this frame (info keys: "
                                 f"{sorted(atoms.info)}; calculator: {sorted(results)})")
            for std in ("energy", "free_energy"):
                if key != std and results.get(std) is not None:
                    atoms.info[f"{std}_unused"] = results.pop(std)
                    (unused if unused is not None else {}).setdefault(std, []).append(i)
            try:
                results["energy"] = float(np.asarray(value, dtype=float))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {key} is {_what(value)}, not a number (expected the total energy, "
                                 "eV)") from None
        else:
            for std in ("energy", "free_energy"):
                if results.get(std) is None and std in atoms.info:
                    results[std] = float(atoms.info.pop(std))
        used["energy"] = key

    key, explicit = resolve("forces", FORCES_KEYS)
    if key is not None:
        value = _take(atoms, results, key, where)
        if value is None:
            raise ValueError(f"{where}: forces_key={key!r} is not in this frame (arrays: "
                             f"{sorted(atoms.arrays)}; calculator: {sorted(results)})")
        if key != "forces" and results.get("forces") is not None:
            atoms.arrays["forces_unused"] = np.asarray(results.pop("forces"))
            (unused if unused is not None else {}).setdefault("forces", []).append(i)
        try:
            results["forces"] = np.array(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key} is not numeric (expected (n_atoms, 3) eV/Å)") from None
        used["forces"] = key

    key, explicit = resolve("stress", STRESS_KEYS + VIRIAL_KEYS)
    if key is not None:
        value = _take(atoms, results, key, where)
        if value is None:
            raise ValueError(f"{where}: stress_key={key!r} is not in this frame (info keys: "
                             f"{sorted(atoms.info)}; calculator: {sorted(results)})")
        if "virial" in key.lower():
            volume = abs(np.linalg.det(atoms.cell.array))
            if not volume > 0.0:
                raise ValueError(f"{where}: {key} given but the cell volume is {volume} Å^3; "
                                 f"stress = -virial / V needs a cell")
            results["stress"] = -_to_voigt(value, f"{where}: {key}") / volume
        else:
            results["stress"] = _to_voigt(value, f"{where}: {key}")
        used["stress"] = key
        if not explicit and "virial" not in key.lower():
            _compare_virial(atoms, results["stress"], i, where, used, conflicts)

    checked = used.pop("virial_checked", None)
    if sources is not None:  # which key each kind came from, per frame: conventions mixed across frames
        for k, v in used.items():
            sources.setdefault(k, {}).setdefault(v, []).append(i)
    # conventions mixed in one frame (energy= with REF_forces): the labels may come from two sources
    standard = ("energy", "free_energy", "forces", "stress", "virial")
    prefixes = {k: "" if v in standard else v.lower().replace(k, "").replace(k.rstrip("s"), "")
                .replace("virial", "") for k, v in used.items()}
    if mixed is not None and len(set(prefixes.values())) > 1:
        label = ", ".join(f"{k} from {v!r}" for k, v in used.items())
        mixed.setdefault(label, []).append(i)
    if unused is not None:
        for container in (atoms.info, atoms.arrays):
            for k in container:
                if (looks_like_label(k) and k not in used.values() and k != checked and not k.endswith("_unused")
                        and k not in ("positions", "numbers") and k not in NOISE_KEYS):
                    unused.setdefault(k, []).append(i)

    if "config_type" in atoms.info:
        atoms.info["config_type"] = str(atoms.info["config_type"])
    atoms.calc = SinglePointCalculator(atoms, **results) if results else None
    return atoms


def _compare_virial(atoms: Atoms, stress: np.ndarray, i: int, where: str, used: dict,
                    conflicts: dict | None) -> None:
    """A virial stored beside the stress is a second copy of it (``stress = -virial / V``): one that agrees
    is not reported as an unused label (``used["virial_checked"]``), one that disagrees is recorded in
    ``conflicts`` (a sign or unit slip in one of the two, or labels of two calculations)."""
    key = next((k for k in VIRIAL_KEYS if k in atoms.info), None)
    volume = abs(np.linalg.det(atoms.cell.array))
    if key is None or not volume > 0.0:
        return
    try:
        other = -_to_voigt(atoms.info[key], f"{where}: {key}") / volume
    except ValueError:  # another shape: left to the unused-label warning
        return
    diff = float(np.max(np.abs(other - stress)))
    if diff <= 1e-6 + 1e-3 * float(np.max(np.abs(stress))):  # eV/Å^3: printing precision
        used["virial_checked"] = key
    elif conflicts is not None:
        conflicts.setdefault(key, []).append((i, diff / units.GPa))


def _check_container(path: Path) -> None:
    """Raise ``ValueError`` for a file no structure reader can take for what it is: one that starts with a
    UTF-8 byte-order mark (ASE's readers and json fail on it with messages about the first line's content) or
    a kernelpot model file (an npz archive) given in the place of structures."""
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:3] == b"\xef\xbb\xbf":
        raise ValueError(f"{path}: line 1: the file starts with a UTF-8 byte-order mark (written by some Windows "
                         "editors), which the structure readers cannot read; save it as UTF-8 without one")
    if head[:2] == b"PK" and path.suffix == ".npz":
        raise ValueError(f"{path}: is a kernelpot model file (.npz), not a file of structures: are the model and "
                         "the data given in each other's place?")


def _unknown_symbol(path: Path, exc: Exception) -> str:
    """``"frame 5 (line 331): unknown element symbol 'Xx'"`` when ASE's reader failed on a chemical symbol
    (a ``KeyError`` naming what an atom line of the file starts with); empty otherwise."""
    key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
    if not (isinstance(key, str) and re.fullmatch(r"[A-Za-z][a-z]{0,2}|[0-9]{1,3}", key)):
        return ""
    what = f"{key!r} (an atomic number? extxyz wants the element's symbol)" if key.isdigit() else repr(key)
    found = []

    def on_atom(frame, no, line):
        if not found and line.split()[:1] == [key]:
            found.append(f"frame {frame} (line {no}): unknown element symbol {what}")

    _xyz_layout(path, on_atom=on_atom)
    # none: a KeyError of something else (a property name), and ASE's own message stands
    return found[0] if found else ""


def _where_reading_stops(path: Path, format: str | None) -> str:
    """``"frame 3 (line 25): "`` where ASE's reader stops, found by reading frame by frame (only after a
    failure; ASE's messages name neither).  The line of the frame's first line is known for (ext)xyz, where
    each frame is ``n_atoms + 2`` lines.  Empty when it cannot be told."""
    import ase.io
    fmt = format or ase.io.formats.filetype(str(path), read=False)
    if fmt in ("extxyz", "xyz"):
        # ASE's extxyz reader indexes the whole file before it yields a frame: a frame whose layout is
        # broken anywhere stops it at frame 0, so the layout is walked here as text first
        broken = _xyz_layout(path)[2]
        if broken:
            return broken
    n_ok, lines = 0, 0
    try:
        for atoms in ase.io.iread(path, index=":", format=format):
            n_ok += 1
            lines += len(atoms) + 2
    except Exception:  # the failure we are locating
        line = f" (line {lines + 1})" if fmt in ("extxyz", "xyz") else ""
        return f"frame {n_ok}{line}: "
    return ""


def _xyz_layout(path: Path, on_comment=None, on_atom=None) -> tuple[int, list, str]:
    """Walk an (ext)xyz file's layout as text: ``(n_frames, blank_lines, broken)``.

    ``on_comment(frame, comment_line)`` is called for each frame's comment line, ``on_atom(frame,
    line_number, atom_line)`` for each atom line.

    Each frame is an atom-count line, a comment line and that many atom lines of as many fields as the
    comment's ``Properties=`` declares (at least 4: species and position).  ``n_frames``: the frames
    whose layout holds; ``blank_lines``: line numbers of blank lines followed by another frame (ASE's
    reader stops at the first); ``broken``: ``"frame 3 (line 25): <what>; "`` for the first frame whose
    layout breaks (cut short, written over), else empty.
    """
    blanks, pending = [], []
    last = None  # (line, atom count) of the frame before
    with open(path, encoding="utf-8", errors="replace") as fh:
        it = enumerate(fh, start=1)
        frame = 0
        for no, line in it:
            if not line.strip():
                pending.append(no)
                continue
            blanks += pending if frame else []
            pending = []
            where = f"frame {frame} (line {no}): "
            try:
                n = int(line.split()[0])
            except ValueError:
                if last is not None and len(line.split()) >= 4 and line.split()[0].isalpha():
                    # an atom line where the next frame should start: the frame before holds more atoms
                    return frame - 1, blanks, (f"frame {frame - 1} (line {last[0]}): its atom count {last[1]} is "
                                               f"too small: line {no} is one more atom line; ")
                return frame, blanks, where + f"expected the number of atoms, found {line.strip()[:40]!r}; "
            last = (no, n)
            comment = next(it, None)
            if comment is None:
                return frame, blanks, where + "the file ends after the atom count; "
            if on_comment is not None:
                on_comment(frame, comment[1])
            m = re.search(r"Properties=(\S+)", comment[1], flags=re.IGNORECASE)
            fields = m.group(1).split(":") if m else []
            try:
                ncol = sum(int(c) for c in fields[2::3]) if fields else None
            except ValueError:
                ncol = None
            for k in range(n):
                atom = next(it, None)
                if atom is None:
                    return frame, blanks, where + f"the file ends after {k} of its {n} atom lines; "
                if on_atom is not None:
                    on_atom(frame, atom[0], atom[1])
                got = len(atom[1].split())
                if (ncol is not None and got != ncol) or got < 4:
                    want = f"{ncol}" if ncol is not None else "at least 4"
                    return frame, blanks, (where + f"line {atom[0]} has {got} field(s) where atom {k} of {n} "
                                           f"should have {want} (a frame cut short or written over?); ")
            frame += 1
    return frame, blanks, ""


def _warn_keys(path: Path, unused: dict, mixed: dict, n_frames: int, sources: dict | None = None,
               conflicts: dict | None = None) -> None:
    """One warning naming label-like keys that were not used, conventions mixed in a frame or across frames,
    and virials that disagree with the stress beside them."""
    lines = []
    for key, found in (conflicts or {}).items():
        idx = np.array([f for f, _ in found])
        worst = max(d for _, d in found)
        lines.append(f"stress and -{key}/V disagree in {len(found)} of {n_frames} frames (frames {_list(idx)}; "
                     f"up to {worst:.3g} GPa): the stress is fitted; check the sign and units of both, or "
                     f"whether they come from the same calculation")
        unused.pop(key, None)
    for kind, by_key in (sources or {}).items():
        # energy and free_energy are one convention (kernelpot fits free_energy where both are given)
        if len({"energy" if k in ("energy", "free_energy") else k for k in by_key}) > 1:
            parts = ", ".join(f"{k!r} in {len(v)} frame(s) (first {v[0]})" for k, v in by_key.items())
            lines.append(f"{kind} read from different keys across frames ({parts}); check the frames come from "
                         "the same kind of calculation, or name the key with energy_key=/forces_key=/stress_key=")
    for key, frames in unused.items():
        lines.append(f"{key!r} looks like a label but is not used ({len(frames)} of {n_frames} frames"
                     + (f"; kept as {key + '_unused'!r}" if key in ("energy", "free_energy", "forces") else "")
                     + "); choose it with energy_key=/forces_key=/stress_key=")
    for label, frames in mixed.items():
        lines.append(f"labels come from different conventions ({label}) in {len(frames)} of {n_frames} "
                     f"frames; check they are from the same calculation, or name the keys")
    if lines:
        warnings.warn(f"{path}: " + "; ".join(lines), DataWarning, stacklevel=3)


def _changed_since_labelled(atoms: Atoms) -> list[str]:
    """What of ``atoms`` (positions, cell, ...) differs from the structure its SinglePointCalculator was given.

    ASE's ``check_state`` compares with ``==``, so a NaN coordinate (a file's ``nan``, which validation names
    as such) reads as a changed structure; arrays equal with NaNs in the same places are the same structure.
    """
    calc = atoms.calc
    if not isinstance(calc, SinglePointCalculator):
        return []
    ref = calc.atoms
    out = []
    for what in calc.check_state(atoms):
        a, b = getattr(ref, f"get_{what}", None), getattr(atoms, f"get_{what}", None)
        try:
            same = a is not None and b is not None and np.array_equal(np.asarray(a(), float), np.asarray(b(), float),
                                                                       equal_nan=True)
        except (TypeError, ValueError):
            same = False
        if not same:
            out.append(what)
    return out


def _stored_results(atoms: Atoms, i: int) -> dict[str, Any]:
    """Results stored in the calculator (never triggers a calculation)."""
    calc = atoms.calc
    if calc is None:
        return {}
    changed = _changed_since_labelled(atoms)
    if changed:
        raise ValueError(f"frame {i}: the labels in the calculator belong to a different "
                         f"structure ({', '.join(changed)} changed since they were attached)")
    return {k: v for k, v in calc.results.items() if k in all_properties}
