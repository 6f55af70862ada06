"""The zoo as rows (our exact cost beside the published figures) and as the V1 Figure 4 plot."""

import pytest

from mobilenets import cost, list_models
from mobilenets.core.errors import MobileNetsError
from mobilenets.zoo.table import plot_zoo, zoo_rows

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rows():
    return zoo_rows()


def test_one_row_per_registered_classifier_with_its_exact_cost(rows):
    assert [row["name"] for row in rows] == list_models()
    v1 = next(row for row in rows if row["name"] == "mobilenet_v1_1.0_224")
    assert (v1["arch"], v1["alpha"], v1["resolution"]) == ("mobilenet_v1", 1.0, 224)
    assert (v1["params"], v1["macs"]) == (4_231_976, 568_740_352)
    v2 = next(row for row in rows if row["name"] == "mobilenet_v2_1.0_224")
    assert v2["params"] == 3_504_872 == cost("mobilenet_v2_1.0_224").params
    assert (v2["reference"]["top1"], v2["reference"]["top5"]) == (71.8, 91.0)
    assert v1["paper"][0] == {
        "source": "Howard et al. 2017, Table 6",
        "macs_m": 569,
        "params_m": 4.2,
        "top1": 70.6,
        "top5": None,
    }


def test_a_family_selects_its_rows(rows):
    v1 = zoo_rows("v1")
    assert [row["name"] for row in v1] == list_models("mobilenet_v1_*")
    families = ("v2", "v3", "v4")
    assert len(v1) + sum(len(zoo_rows(family)) for family in families) == len(rows)
    assert [row["name"] for row in zoo_rows("v3")] == list_models("mobilenet_v3_*")
    assert [row["name"] for row in zoo_rows("v4")] == list_models("mobilenet_v4_*")
    with pytest.raises(MobileNetsError, match="family must be one of v1, v2, v3, v4, got 'v5'"):
        zoo_rows("v5")


@pytest.mark.parametrize("suffix, magic", [(".png", PNG), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_the_plot_is_written_in_the_format_of_its_suffix(rows, tmp_path, suffix, magic):
    path = plot_zoo(rows, tmp_path / f"zoo{suffix}")
    assert path == tmp_path / f"zoo{suffix}"
    assert path.read_bytes().startswith(magic) and path.stat().st_size > 10_000


def test_the_plot_needs_a_published_top1_and_a_writable_path(rows, tmp_path):
    unpublished = [{**row, "reference": None} for row in rows]
    with pytest.raises(MobileNetsError, match="no variant in this selection has a published top-1"):
        plot_zoo(unpublished, tmp_path / "zoo.png")
    missing = tmp_path / "missing" / "zoo.png"
    with pytest.raises(MobileNetsError, match=r"^cannot write plot '.*missing/zoo\.png': "):
        plot_zoo(rows, missing)
    assert list(tmp_path.iterdir()) == []
