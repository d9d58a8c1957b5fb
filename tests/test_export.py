"""Exports (merfishflow.io.export): ImageJ / OME TIFF hyperstacks and SpaceTx / starfish files.

A tiny datastore is built here with the datastore writers (2 rounds x 2
readout channels = 4 bits, 3 z-planes of 5 x 7 pixels, 2 tiles), so the tests
do not depend on the whole workflow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from merfishflow.io import datastore, export
from merfishflow.errors import IncompleteDataError, InputError
from merfishflow.io.paths import REGISTERED_DATA, ExperimentPaths

VOXEL = [0.31, 0.108, 0.108]
SHAPE = (3, 5, 7)
# exp_order: round 0 images bits 3 and 1, round 1 bits 2 and 4 (columns ch561, ch638).
EXP_ORDER = {"columns": ["ch561", "ch638"], "rounds": [[3, 1], [2, 4]]}
BITS = ["bit001", "bit002", "bit003", "bit004"]
GENES = ["GeneA", "GeneB", "Blank-1"]
CODEWORDS = [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]]
ORIGINS = {"tile0000": [1.5, -20.25, 100.0], "tile0001": [1.5, -20.25, 200.0]}


def _data(name: str, tile: str) -> np.ndarray:
    """Distinct, reproducible uint16 data per array, spanning the full range (0 and 65535 included)."""
    seed = int.from_bytes(hashlib.sha256(f"{tile}/{name}".encode()).digest()[:4], "little")
    data = np.random.default_rng(seed).integers(0, 65536, size=SHAPE, dtype=np.uint16)
    data.flat[0], data.flat[1] = 0, 65535
    return data


def build_datastore(root: Path, *, with_placement=True) -> Path:
    paths = ExperimentPaths(root)
    datastore.create_group(paths.calibrations)
    datastore.write_marker(paths.calibrations, {
        "exp_codebook": {"gene_id": GENES, "codewords": CODEWORDS, "bits": BITS},
        "exp_order": EXP_ORDER,
        "channels": [{"name": "ch488", "role": "fiducial"}, {"name": "ch561", "role": "readout"},
                     {"name": "ch638", "role": "readout"}],
        "voxel_size_zyx_um": VOXEL,
    })
    for tile, origin in ORIGINS.items():
        for r in range(len(EXP_ORDER["rounds"])):
            group = datastore.create_group(paths.fiducial_group(tile, f"round{r:04d}"))
            datastore.write_marked_array(group / REGISTERED_DATA, _data(f"round{r:04d}", tile), {"stage": "test"})
        for bit in BITS:
            group = datastore.create_group(paths.readout_group(tile, bit))
            datastore.write_marked_array(group / REGISTERED_DATA, _data(bit, tile), {"stage": "test"})
        if with_placement:
            group = datastore.create_group(paths.global_registration(tile))
            datastore.write_marker(group, {"origin_zyx_um": origin, "spacing_zyx_um": VOXEL})
    return root


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return build_datastore(tmp_path_factory.mktemp("export") / "experiment")


def registered(root, tile, name):
    paths = ExperimentPaths(root)
    if name.startswith("bit"):
        return datastore.read_marked_array(paths.readout_array(tile, name, REGISTERED_DATA))
    return datastore.read_marked_array(paths.fiducial_array(tile, name.split("_")[1], REGISTERED_DATA))


def expected_czyx(root, tile, names):
    return np.stack([registered(root, tile, name) for name in names])


# TIFF ----------------------------------------------------------------------------------------
def _resolution(page):
    assert page.tags["ResolutionUnit"].value == 1  # NONE: pixels per µm, the unit is in the metadata
    x_num, x_den = page.tags["XResolution"].value
    y_num, y_den = page.tags["YResolution"].value
    return x_num / x_den, y_num / y_den


@pytest.mark.parametrize("what, names", [
    ("readouts", BITS),
    ("fiducials", ["polyDT_round0000", "polyDT_round0001"]),
    ("all", ["polyDT_round0000", "polyDT_round0001"] + BITS),
])
def test_imagej_export(experiment, tmp_path, what, names):
    out = export.export_tile_tiff(experiment, "tile0001", tmp_path / "t.tif", kind="imagej", what=what)
    expected = expected_czyx(experiment, "tile0001", names)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and not tif.is_ome
        series = tif.series[0]
        assert series.axes == "ZCYX"  # ImageJ's hyperstack order; CZYX is not storable (docs/exports.md)
        assert series.shape == (SHAPE[0], len(names), SHAPE[1], SHAPE[2])
        assert series.dtype == np.uint16
        data = series.asarray()
        meta = tif.imagej_metadata
        page = tif.pages[0]
        assert len(tif.pages) == SHAPE[0] * len(names)
        assert "DateTime" not in page.tags
    np.testing.assert_array_equal(data.transpose(1, 0, 2, 3), expected)
    assert meta["channels"] == len(names) and meta["slices"] == SHAPE[0] and meta["hyperstack"]
    assert meta["spacing"] == pytest.approx(VOXEL[0], rel=1e-12)
    assert meta["unit"] == "um"
    assert meta["Labels"] == [name for _ in range(SHAPE[0]) for name in names]
    info = json.loads(meta["Info"])
    assert info["channels"] == names and info["origin_zyx_um"] == ORIGINS["tile0001"]
    assert _resolution(page) == pytest.approx((1 / VOXEL[2], 1 / VOXEL[1]), rel=1e-6)


@pytest.mark.parametrize("what, names", [("readouts", BITS), ("all", ["polyDT_round0000", "polyDT_round0001"] + BITS)])
def test_ome_export(experiment, tmp_path, what, names):
    import xml.etree.ElementTree as ET

    out = export.export_tile_tiff(experiment, "tile0000", tmp_path / "t.ome.tif", kind="ome", what=what)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CZYX"
        assert series.shape == (len(names),) + SHAPE and series.dtype == np.uint16
        data = series.asarray()
        xml = tif.ome_metadata
        page = tif.pages[0]
        assert "DateTime" not in page.tags
    np.testing.assert_array_equal(data, expected_czyx(experiment, "tile0000", names))
    ns = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
    pixels = ET.fromstring(xml).find("ome:Image/ome:Pixels", ns)
    assert pixels.get("DimensionOrder") == "XYZCT" and pixels.get("Type") == "uint16"
    assert (int(pixels.get("SizeC")), int(pixels.get("SizeZ")), int(pixels.get("SizeY")),
            int(pixels.get("SizeX"))) == (len(names),) + SHAPE
    for axis, size in zip("ZYX", VOXEL):
        assert float(pixels.get(f"PhysicalSize{axis}")) == pytest.approx(size, rel=1e-12)
        assert pixels.get(f"PhysicalSize{axis}Unit") == "µm"
    assert [c.get("Name") for c in pixels.findall("ome:Channel", ns)] == names
    assert _resolution(page) == pytest.approx((1 / VOXEL[2], 1 / VOXEL[1]), rel=1e-6)


@pytest.mark.parametrize("kind", export.TIFF_KINDS)
def test_tiff_export_is_byte_identical(experiment, tmp_path, kind):
    first = export.export_tile_tiff(experiment, "tile0000", tmp_path / "a.tif", kind=kind, what="all")
    second = export.export_tile_tiff(experiment, "tile0000", tmp_path / "b.tif", kind=kind, what="all")
    assert first.read_bytes() == second.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_tiff_export_without_global_registration(tmp_path):
    root = build_datastore(tmp_path / "experiment", with_placement=False)
    out = export.export_tile_tiff(root, "tile0000", tmp_path / "t.tif")
    with tifffile.TiffFile(out) as tif:
        assert "origin_zyx_um" not in json.loads(tif.imagej_metadata["Info"])


def test_large_imagej_export_is_truncated(experiment, tmp_path, monkeypatch):
    """Above 4 GB an ImageJ file keeps one IFD (as ImageJ writes it); tifffile still reads every plane."""
    monkeypatch.setattr(export, "CLASSIC_TIFF_MAX_BYTES", 100)
    out = export.export_tile_tiff(experiment, "tile0000", tmp_path / "t.tif", what="readouts")
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 1
        assert tif.series[0].axes == "ZCYX"
        data = tif.series[0].asarray()
    np.testing.assert_array_equal(data.transpose(1, 0, 2, 3), expected_czyx(experiment, "tile0000", BITS))


def test_tiff_export_refuses_bad_arguments_and_incomplete_data(experiment, tmp_path):
    with pytest.raises(InputError, match="kind"):
        export.export_tile_tiff(experiment, "tile0000", tmp_path / "t.tif", kind="png")
    with pytest.raises(InputError, match="what"):
        export.export_tile_tiff(experiment, "tile0000", tmp_path / "t.tif", what="everything")
    with pytest.raises(InputError, match="tile"):
        export.export_tile_tiff(experiment, "tile7", tmp_path / "t.tif")
    with pytest.raises(IncompleteDataError):
        export.export_tile_tiff(experiment, "tile0009", tmp_path / "t.tif")
    assert not (tmp_path / "t.tif").exists()


def test_default_tiff_name():
    assert export.default_tiff_name("tile0003") == "tile0003_readouts.tif"
    assert export.default_tiff_name("tile0003", kind="ome", what="all") == "tile0003_all.ome.tif"


# SpaceTx / starfish --------------------------------------------------------------------------
def test_bit_round_channel():
    assert export.bit_round_channel({"exp_order": EXP_ORDER}) == {
        "bit003": (0, 0), "bit001": (0, 1), "bit002": (1, 0), "bit004": (1, 1)}


def test_starfish_codebook_document(experiment, tmp_path):
    path = export.export_starfish_codebook(experiment, tmp_path / "codebook.json")
    doc = json.loads(path.read_text())
    assert doc["version"] == "0.0.0"
    assert [m["target"] for m in doc["mappings"]] == GENES
    # GeneA = bit001 + bit002 = (r0, c1) + (r1, c0); Blank-1 = bit001 + bit004 = (r0, c1) + (r1, c1)
    assert doc["mappings"][0]["codeword"] == [{"r": 0, "c": 1, "v": 1}, {"r": 1, "c": 0, "v": 1}]
    assert doc["mappings"][2]["codeword"] == [{"r": 0, "c": 1, "v": 1}, {"r": 1, "c": 1, "v": 1}]


@pytest.fixture(scope="module")
def spacetx(experiment, tmp_path_factory):
    return export.export_spacetx(experiment, "tile0001", tmp_path_factory.mktemp("spacetx"))


def test_spacetx_tileset_structure(experiment, spacetx):
    doc = json.loads(spacetx.tileset.read_text())
    nz, ny, nx = SHAPE
    assert doc["version"] == "0.1.0"
    assert doc["dimensions"] == ["r", "c", "z", "y", "x"]
    assert doc["shape"] == {"r": 2, "c": 2, "z": nz}
    assert doc["default_tile_format"] == "TIFF" and doc["default_tile_shape"] == {"x": nx, "y": ny}
    assert len(doc["tiles"]) == 2 * 2 * nz == len(spacetx.tiles)
    z0, y0, x0 = ORIGINS["tile0001"]
    dz, dy, dx = VOXEL
    seen = set()
    for tile in doc["tiles"]:
        r, c, z = (tile["indices"][k] for k in ("r", "c", "z"))
        seen.add((r, c, z))
        path = spacetx.tileset.parent / tile["file"]
        assert tile["file"] == f"primary_images-tile0001-H{r}-C{c}-Z{z}.tiff"
        assert tile["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert tile["tile_format"] == "TIFF" and tile["tile_shape"] == {"x": nx, "y": ny}
        assert tile["coordinates"]["xc"] == pytest.approx([x0, x0 + (nx - 1) * dx])
        assert tile["coordinates"]["yc"] == pytest.approx([y0, y0 + (ny - 1) * dy])
        assert tile["coordinates"]["zc"] == pytest.approx([z0 + z * dz] * 2)
        bit = f"bit{EXP_ORDER['rounds'][r][c]:03d}"
        np.testing.assert_array_equal(tifffile.imread(path), registered(experiment, "tile0001", bit)[z])
    assert seen == {(r, c, z) for r in range(2) for c in range(2) for z in range(nz)}
    manifest = json.loads(spacetx.primary_images.read_text())
    assert manifest["version"] == "0.1.0" and manifest["contents"] == {"tile0001": spacetx.tileset.name}
    experiment_doc = json.loads(spacetx.experiment.read_text())
    assert experiment_doc == {"version": "5.0.0", "images": {"primary": "primary_images.json"},
                              "codebook": "codebook.json", "extras": {}}


def test_spacetx_is_byte_identical(experiment, spacetx, tmp_path):
    again = export.export_spacetx(experiment, "tile0001", tmp_path)
    first = {p.name: p.read_bytes() for p in spacetx.tileset.parent.iterdir()}
    second = {p.name: p.read_bytes() for p in again.tileset.parent.iterdir()}
    assert first == second


def test_spacetx_needs_global_registration(tmp_path):
    root = build_datastore(tmp_path / "experiment", with_placement=False)
    with pytest.raises(IncompleteDataError, match="global_registration"):
        export.export_spacetx(root, "tile0000", tmp_path / "out")


def _starfish():
    try:
        import starfish  # noqa: F401
    except ImportError:
        pytest.skip("starfish is not installed")
    return starfish


def _starfish_rcz(experiment, tile):
    """Our registered readouts as starfish's (r, c, z, y, x) tensor."""
    return np.stack([np.stack([registered(experiment, tile, f"bit{b:03d}") for b in row])
                     for row in EXP_ORDER["rounds"]])


def test_starfish_opens_the_tileset(experiment, spacetx):
    starfish = _starfish()
    from starfish.types import Axes, Coordinates

    stack = starfish.ImageStack.from_path_or_url(str(spacetx.tileset))
    assert (stack.num_rounds, stack.num_chs, stack.num_zplanes) == (2, 2, SHAPE[0])
    values = stack.xarray.transpose("r", "c", "z", "y", "x").values
    assert values.dtype == np.float32
    expected = _starfish_rcz(experiment, "tile0001")
    np.testing.assert_allclose(values, expected / 65535.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.rint(values.astype(np.float64) * 65535).astype(np.uint16), expected)
    z0, y0, x0 = ORIGINS["tile0001"]
    dz, dy, dx = VOXEL
    np.testing.assert_allclose(stack.xarray[Coordinates.X.value].values, x0 + dx * np.arange(SHAPE[2]), atol=1e-9)
    np.testing.assert_allclose(stack.xarray[Coordinates.Y.value].values, y0 + dy * np.arange(SHAPE[1]), atol=1e-9)
    np.testing.assert_allclose(stack.xarray[Coordinates.Z.value].values, z0 + dz * np.arange(SHAPE[0]), atol=1e-9)
    assert stack.xarray.sizes[Axes.ZPLANE.value] == SHAPE[0]


def test_starfish_opens_the_experiment_and_codebook(experiment, spacetx):
    starfish = _starfish()

    codebook = starfish.Codebook.open_json(str(spacetx.codebook))
    assert list(codebook["target"].values) == GENES
    assert (codebook.sizes["r"], codebook.sizes["c"]) == (2, 2)
    dense = codebook.transpose("target", "r", "c").values
    where = export.bit_round_channel({"exp_order": EXP_ORDER})
    for g, word in enumerate(CODEWORDS):
        want = np.zeros((2, 2))
        for bit, on in zip(BITS, word):
            if on:
                want[where[bit]] = 1
        np.testing.assert_array_equal(dense[g], want)

    exp = starfish.Experiment.from_json(str(spacetx.experiment))
    assert list(exp.keys()) == ["tile0001"]
    stack = exp["tile0001"].get_image("primary")
    values = stack.xarray.transpose("r", "c", "z", "y", "x").values
    np.testing.assert_allclose(values, _starfish_rcz(experiment, "tile0001") / 65535.0, rtol=0, atol=1e-6)
    assert list(exp.codebook["target"].values) == GENES


def test_spacetx_validates_against_starfish_schema(spacetx):
    _starfish()
    from starfish.core.spacetx_format import validate_sptx

    assert validate_sptx.validate(str(spacetx.experiment))
