"""The project's image-label file and the IRN import (``wsss import-irn-labels``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import VOC_NAMES, make_coco_json, make_voc

from wsss.cli import main
from wsss.data.labels import (
    FORMAT_NAME,
    convert_irn_labels,
    decode_irn_id,
    detect_irn_id_format,
    read_image_labels,
    write_image_labels,
)
from wsss.data.voc import VOCDataset
from wsss.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "wsss"


def _irn_vector(*classes: int, k: int = 20) -> np.ndarray:
    vector = np.zeros(k, dtype=np.float32)
    vector[[c - 1 for c in classes]] = 1.0
    return vector


def test_write_then_read_round_trip(tmp_path):
    path = tmp_path / "image_labels.json"
    write_image_labels(path, {"b": [3, 1, 3], "a": np.array([20]), "c": []}, VOC_NAMES)
    text = path.read_text()
    assert text.splitlines()[5:8] == ['    "a": [20],', '    "b": [1, 3],', '    "c": []']
    document = json.loads(text)
    assert document["format"] == FORMAT_NAME and document["version"] == 1
    assert document["classes"] == VOC_NAMES
    loaded = read_image_labels(path)
    assert loaded.classes == VOC_NAMES and loaded.num_classes == 21 and loaded.path == path
    assert {k: v.tolist() for k, v in loaded.labels.items()} == {"a": [20], "b": [1, 3], "c": []}
    assert loaded.labels["b"].dtype == np.int64


def test_write_rejects_out_of_range_ids(tmp_path):
    with pytest.raises(ValueError, match="outside 1..3"):
        write_image_labels(tmp_path / "x.json", {"a": [4]}, ["background", "a", "b", "c"])


def test_reader_accepts_class_names(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({
        "format": FORMAT_NAME, "version": 1, "classes": ["background", "cat", "dog"],
        "labels": {"x": ["dog", 1], "y": []},
    }))  # fmt: skip
    loaded = read_image_labels(path)
    assert loaded.labels["x"].tolist() == [1, 2]
    assert loaded.labels["y"].tolist() == []


@pytest.mark.parametrize(
    "document, message",
    [
        ({"format": "other"}, 'expected "format": "wsss-image-labels"'),
        (
            {"format": FORMAT_NAME, "version": 2, "classes": ["bg", "a"], "labels": {}},
            "unsupported .* version 2",
        ),
        (
            {"format": FORMAT_NAME, "version": 1, "classes": ["bg"], "labels": {}},
            "at least two non-empty names",
        ),
        (
            {"format": FORMAT_NAME, "version": 1, "classes": ["bg", "a", "a"], "labels": {}},
            "duplicate names: a",
        ),
        (
            {"format": FORMAT_NAME, "version": 1, "classes": ["bg", "a"], "labels": []},
            '"labels" must be an object',
        ),
        (
            {"format": FORMAT_NAME, "version": 1, "classes": ["bg", "a"], "labels": {"x": [2]}},
            "class id 2 is outside 1..1",
        ),
        (
            {"format": FORMAT_NAME, "version": 1, "classes": ["bg", "a"], "labels": {"x": [0]}},
            "class id 0 is outside",
        ),
        (
            {"format": FORMAT_NAME, "version": 1, "classes": ["bg", "a"], "labels": {"x": [True]}},
            "True is not a class id",
        ),
        (
            {"format": FORMAT_NAME, "version": 1, "classes": ["bg", "a"], "labels": {"x": ["bg"]}},
            "not a foreground class",
        ),
        ({"format": FORMAT_NAME, "version": 1, "classes": ["bg", "a"], "labels": {"x": 1}}, "must be a list"),
    ],
)
def test_reader_rejects_malformed_files(tmp_path, document, message):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=message) as caught:
        read_image_labels(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


def test_reader_on_missing_and_non_json_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_image_labels(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_image_labels(bad)


def test_decode_irn_ids():
    assert decode_irn_id(2007000032, "voc") == "2007_000032"
    assert decode_irn_id(np.int32(2011003276), "voc") == "2011_003276"
    assert decode_irn_id(9, "coco") == "000000000009"
    assert decode_irn_id(581929, "coco") == "000000581929"
    with pytest.raises(ValueError):
        decode_irn_id(1, "kitti")


def test_detect_irn_id_format():
    assert detect_irn_id_format([2007000032, 2012004331]) == "voc"
    assert detect_irn_id_format([2007000032, 9]) == "coco"
    assert detect_irn_id_format([139, 285, 632]) == "coco"
    assert detect_irn_id_format([3007000032]) == "coco"  # ten digits but no year


def test_convert_irn_labels():
    raw = {2007000032: _irn_vector(1, 15), 2007000039: _irn_vector(20), 2008000002: _irn_vector()}
    labels = convert_irn_labels(raw, VOC_NAMES)
    assert {k: v.tolist() for k, v in labels.items()} == {
        "2007_000032": [1, 15],
        "2007_000039": [20],
        "2008_000002": [],
    }
    assert labels["2007_000032"].dtype == np.int64


def test_convert_irn_labels_errors(tmp_path):
    source = tmp_path / "cls_labels.npy"
    with pytest.raises(DataError, match=r"shape \(19,\), expected \(20,\)"):
        convert_irn_labels({2007000032: np.zeros(19, np.float32)}, VOC_NAMES, source=source)
    with pytest.raises(DataError, match="not a 0/1 multi-hot vector"):
        convert_irn_labels({2007000032: np.full(20, 0.5, np.float32)}, VOC_NAMES, source=source)
    with pytest.raises(DataError, match="two keys decode to the same image id 000000000009"):
        convert_irn_labels({9: _irn_vector(1), "000000000009": _irn_vector(2)}, VOC_NAMES, "coco", source)
    with pytest.raises(DataError, match="not an integer image id"):
        convert_irn_labels({(1, 2): _irn_vector(1)}, VOC_NAMES, "voc", source)


def test_import_irn_labels_round_trip_into_a_dataset(tmp_path, capsys):
    fixture = make_voc(tmp_path / "voc")
    raw = {int(i.replace("_", "")): _irn_vector(*fixture.labels[i]) for i in fixture.ids}
    source = tmp_path / "cls_labels.npy"
    np.save(source, raw)  # exactly how IRN's make_cls_labels.py writes it
    out = fixture.root / "image_labels.json"

    assert main(["import-irn-labels", str(source), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip().splitlines()
    assert warning == [f"wsss: import-irn-labels unpickles {source}; do this only with a file you trust"]
    assert f"wrote labels of 4 images (4 with a foreground class, 20 classes) to {out}" in captured.out

    loaded = read_image_labels(out)
    assert loaded.classes == VOC_NAMES
    assert {k: v.tolist() for k, v in loaded.labels.items()} == fixture.labels
    ds = VOCDataset(fixture.root, label_source="file")
    assert {i: ds.image_labels(i).tolist() for i in ds.ids} == fixture.labels


def test_import_irn_labels_default_output_beside_input(tmp_path):
    source = tmp_path / "cls_labels.npy"
    np.save(source, {2007000032: _irn_vector(3)})
    assert main(["import-irn-labels", str(source)]) == 0
    assert read_image_labels(tmp_path / "image_labels.json").labels["2007_000032"].tolist() == [3]


def test_import_irn_coco_labels_pads_ids_to_12_digits(tmp_path):
    names = ["background"] + [f"c{k}" for k in range(1, 81)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    source = tmp_path / "cls_labels_coco.npy"
    np.save(source, {9: _irn_vector(1, 80, k=80), 581929: _irn_vector(45, k=80)})
    out = tmp_path / "coco_labels.json"
    assert (
        main(
            ["import-irn-labels", str(source), "--classes", str(tmp_path / "classes.txt"), "--out", str(out)]
        )
        == 0
    )
    loaded = read_image_labels(out)
    assert loaded.num_classes == 81
    assert {k: v.tolist() for k, v in loaded.labels.items()} == {
        "000000000009": [1, 80],
        "000000581929": [45],
    }


def test_import_irn_labels_classes_from_a_coco_json(tmp_path):
    coco_json = tmp_path / "instances.json"
    make_coco_json(coco_json, tmp_path / "images")
    source = tmp_path / "cls_labels_coco.npy"
    np.save(source, {9: _irn_vector(2, 3, k=4), 25: _irn_vector(3, k=4)})
    out = tmp_path / "labels.json"
    assert main(["import-irn-labels", str(source), "--classes", str(coco_json), "--out", str(out)]) == 0
    loaded = read_image_labels(out)
    assert loaded.classes == ["background", "person", "cat", "dog", "giraffe"]
    assert {k: v.tolist() for k, v in loaded.labels.items()} == {"000000000009": [2, 3], "000000000025": [3]}


def test_import_irn_labels_explicit_id_format(tmp_path):
    source = tmp_path / "cls.npy"
    np.save(source, {2007000032: _irn_vector(1)})
    out = tmp_path / "o.json"
    assert main(["import-irn-labels", str(source), "--id-format", "coco", "--out", str(out)]) == 0
    assert list(read_image_labels(out).labels) == ["002007000032"]


def test_import_irn_labels_needs_classes_for_non_voc_vectors(tmp_path, capsys):
    source = tmp_path / "cls.npy"
    np.save(source, {9: _irn_vector(1, k=80)})
    assert main(["import-irn-labels", str(source)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"wsss: error: {source}: label vectors have 80 entries, not the 20 VOC classes; pass --classes "
        "(classes.txt, background first, or a COCO instances JSON)"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        (b"not a numpy file at all", "not a NumPy .npy file"),
        ("array", "not a pickled dict as IRN"),
        ("set", "not a non-empty dict"),
        ("empty", "not a non-empty dict"),
    ],
)
def test_import_irn_labels_bad_inputs(tmp_path, capsys, content, message):
    source = tmp_path / "cls_labels.npy"
    if content == "array":
        np.save(source, np.zeros((3, 20), np.float32))
    elif content == "set":
        np.save(source, {1, 2})
    elif content == "empty":
        np.save(source, {})
    elif content is not None:
        source.write_bytes(content)
    assert main(["import-irn-labels", str(source)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"wsss: error: {source}: ") and message in err[-1]
    assert not (tmp_path / "image_labels.json").exists()


def test_only_the_import_command_unpickles():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if re.search(r"allow_pickle\s*=\s*True", text) or re.search(r"\bpickle\.loads?\(", text):
            offenders.append(path.relative_to(SRC).as_posix())
    assert offenders == ["commands/import_irn_labels.py"]
