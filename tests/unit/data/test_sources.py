import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from torchgraft.data import load_data, load_display_names, stratified_split
from torchgraft.errors import UserError
from torchgraft.testing import make_image_folder


def test_class_folders_get_a_stratified_seeded_split(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=("a", "b", "c"), per_class=10)
    splits = load_data(str(tmp_path), val_fraction=0.2, seed=1)
    assert splits.class_names == ["a", "b", "c"]
    assert np.bincount(splits.val.labels).tolist() == [2, 2, 2]
    assert np.bincount(splits.train.labels).tolist() == [8, 8, 8]
    assert not set(splits.train.images) & set(splits.val.images)
    again = load_data(str(tmp_path), val_fraction=0.2, seed=1)
    assert again.val.images == splits.val.images
    other = load_data(str(tmp_path), val_fraction=0.2, seed=2)
    assert other.val.images != splits.val.images


@pytest.mark.parametrize("val_folder", ["val", "valid", "validation"])
def test_split_folders_are_used_as_they_are(tmp_path: Path, val_folder: str) -> None:
    make_image_folder(tmp_path, classes=("x", "y"), per_class=8, split=True, val_folder=val_folder)
    splits = load_data(str(tmp_path))
    assert splits.class_names == ["x", "y"]
    assert len(splits.train) == 12 and len(splits.val) == 4
    assert all(val_folder in str(p) for p in splits.val.images)


def test_small_classes_still_get_a_validation_image() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(labels[val].tolist()) == [0, 1, 1]
    assert len(train) + len(val) == len(labels)


def test_bundled_sets() -> None:
    mnist = load_data("mnist5k")
    assert len(mnist.train) + len(mnist.val) == 5000
    assert mnist.train.images.shape[1:] == (28, 28)
    assert mnist.channels == 1
    digits = load_data("digits")
    assert len(digits.train) + len(digits.val) == 1797
    assert digits.train.images.max() == 255


def test_missing_folder_suggests_a_bundled_set() -> None:
    with pytest.raises(UserError, match="Did you mean 'mnist5k'"):
        load_data("mnist5")


def test_folder_without_class_folders_says_how_to_lay_it_out(tmp_path: Path) -> None:
    (tmp_path / "loose.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="no class folders"):
        load_data(str(tmp_path))


def test_display_names_from_cat_to_name_json(tmp_path: Path) -> None:
    path = tmp_path / "cat_to_name.json"
    path.write_text(json.dumps({"1": "pink primrose", "3": "canterbury bells"}))
    assert load_display_names(path, ["1", "2", "3"]) == ["pink primrose", "2", "canterbury bells"]
    path.write_text(json.dumps({"99": "nothing"}))
    with pytest.raises(UserError, match="Keys must be the class folder names"):
        load_display_names(path, ["1", "2"])


def test_csv_with_relative_paths_and_a_split_column(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=4)
    rows = ["path,label,split"]
    for index, path in enumerate(sorted((tmp_path / "imgs").rglob("*.png"))):
        split = "valid" if index % 4 == 0 else "train"
        rows.append(f"{path.relative_to(tmp_path)},{path.parent.name},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = load_data(str(tmp_path / "labels.csv"))
    assert splits.class_names == ["a", "b"]
    assert len(splits.train) == 6 and len(splits.val) == 2
    assert all(p.is_file() for p in splits.train.images)


def test_json_lines_without_splits_get_a_stratified_split(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=10)
    lines = [
        json.dumps({"path": str(p.relative_to(tmp_path)), "label": p.parent.name})
        for p in sorted((tmp_path / "imgs").rglob("*.png"))
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines))
    splits = load_data(str(tmp_path / "labels.jsonl"), val_fraction=0.2)
    assert np.bincount(splits.val.labels).tolist() == [2, 2]


def test_label_file_rows_without_a_label_are_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label\nx.png,\n")
    with pytest.raises(UserError, match=r"row 2: needs a 'path' and a 'label'"):
        load_data(str(tmp_path / "labels.csv"))


def test_a_class_in_one_split_only_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_image_folder(tmp_path, classes=("a", "b"), per_class=4, split=True)
    extra = tmp_path / "train" / "c"
    extra.mkdir()
    (extra / "one.png").write_bytes((tmp_path / "train" / "a" / "a_003.png").read_bytes())
    splits = load_data(str(tmp_path))
    assert splits.class_names == ["a", "b", "c"]
    assert splits.missing_classes() == {"val": ["c"]}
    assert "classes with no val images: c" in caplog.text


def test_nested_class_folders_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_image_folder(tmp_path / "data" / "animals", classes=("cat", "dog"), per_class=3)
    make_image_folder(tmp_path / "data", classes=("plant",), per_class=3)
    splits = load_data(str(tmp_path / "data"))
    assert splits.class_names == ["animals", "plant"]
    assert "has sub-folders (cat, dog)" in caplog.text


def test_a_single_class_folder_points_inside(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "outer" / "dataset", classes=("cat", "dog"), per_class=2)
    with pytest.raises(UserError, match=r"single class folder \(dataset\).*pass .*outer/dataset"):
        load_data(str(tmp_path / "outer"))


def write_labels(folder: Path, rows: list[str], encoding: str = "utf-8") -> Path:
    """labels.csv over a generated two-class folder: a header, then one line per image."""
    path = folder / "labels.csv"
    path.write_text("\n".join(rows) + "\n", encoding=encoding)
    return path


def labelled_rows(folder: Path, per_class: int = 4) -> list[str]:
    make_image_folder(folder / "imgs", classes=("a", "b"), per_class=per_class)
    return [
        f"{path.relative_to(folder).as_posix()},{path.parent.name},{'val' if i % 4 else 'train'}"
        for i, path in enumerate(sorted((folder / "imgs").rglob("*.png")))
    ]


def test_a_csv_saved_by_excel_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    labels = write_labels(tmp_path, ["path,label,split", *labelled_rows(tmp_path)], "utf-8-sig")
    assert labels.read_bytes().startswith(b"\xef\xbb\xbfpath,")
    splits = load_data(str(labels))
    assert splits.class_names == ["a", "b"] and len(splits.train) + len(splits.val) == 8


def test_an_empty_split_cell_is_refused_with_its_row_number(tmp_path: Path) -> None:
    rows = labelled_rows(tmp_path)
    rows[5] = rows[5].rsplit(",", 1)[0] + ","  # the sixth image: line 7, after the header
    labels = write_labels(tmp_path, ["path,label,split", *rows])
    with pytest.raises(UserError) as refused:
        load_data(str(labels))
    message = str(refused.value)
    assert "labels.csv, row 7: empty 'split'" in message and "\n" not in message
    assert "train, val or test" in message and "remove the column" in message


def test_a_json_line_without_the_split_others_have_is_refused(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    lines = [
        {"path": str(p.relative_to(tmp_path)), "label": p.parent.name, "split": "train"}
        for p in files
    ]
    del lines[2]["split"]
    (tmp_path / "labels.jsonl").write_text("\n".join(map(json.dumps, lines)))
    with pytest.raises(UserError, match=r"labels.jsonl, row 3: empty 'split'"):
        load_data(str(tmp_path / "labels.jsonl"))


def test_the_fingerprint_survives_a_listed_file_that_is_missing(tmp_path: Path) -> None:
    rows = [row.rsplit(",", 1)[0] for row in labelled_rows(tmp_path)]
    labels = write_labels(tmp_path, ["path,label", *rows, "imgs/b/gone.png,b"])
    first = load_data(str(labels)).fingerprint()
    shutil.copy(tmp_path / "imgs" / "b" / "b_000.png", tmp_path / "imgs" / "b" / "gone.png")
    assert load_data(str(labels)).fingerprint() != first  # and changes when the file appears


def test_the_fingerprint_survives_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=("a", "b"), per_class=3)
    odd = tmp_path / "a" / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, as old cameras wrote
    shutil.copy(tmp_path / "a" / "a_000.png", odd)
    splits = load_data(str(tmp_path))
    assert odd in [*splits.train.images, *splits.val.images]
    assert len(splits.fingerprint()) == 16


def test_a_latin1_label_file_is_told_to_be_saved_as_utf8(tmp_path: Path) -> None:
    rows = labelled_rows(tmp_path)
    labels = write_labels(
        tmp_path, ["path,label,split", rows[0].replace(",a,", ",café,")], "latin-1"
    )
    with pytest.raises(
        UserError, match=r"not UTF-8 \(byte \d+ is b'\\xe9'\); save the file as UTF-8"
    ):
        load_data(str(labels))


def test_a_quoted_line_break_in_a_csv_path_stays_in_the_name(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    odd = tmp_path / "imgs/a/two\r\nlines.png"
    shutil.copy(tmp_path / "imgs/a/a_000.png", odd)
    with (tmp_path / "labels.csv").open("w", newline="") as file:  # quoted, "\r\n" line ends
        csv.writer(file).writerows(
            [["path", "label"]]
            + [
                [p.relative_to(tmp_path).as_posix(), p.parent.name]
                for p in odd.parent.parent.rglob("*.png")
            ]
        )
    splits = load_data(str(tmp_path / "labels.csv"), val_fraction=0.0)
    assert odd in splits.train.images and len(splits.train) == 5


def test_csv_rows_carrying_a_split_the_header_lacks_are_refused(tmp_path: Path) -> None:
    """`path,label` over rows of which some add `,test`: an automatic split would train on them."""
    rows = [row.rsplit(",", 1)[0] for row in labelled_rows(tmp_path)]
    rows[3] += ",test"  # the fourth image: line 5, after the header
    rows[6] += ",test"
    labels = write_labels(tmp_path, ["path,label", *rows])
    with pytest.raises(UserError) as refused:
        load_data(str(labels))
    message = str(refused.value)
    assert f"{labels}, row 5: more values than the header (path,label)" in message
    assert "path,label,split" in message and "train, val or test" in message


@pytest.mark.parametrize("missing", ["absent", "null", "blank"])
def test_a_json_lines_file_mixing_rows_with_and_without_a_split_names_the_line(
    tmp_path: Path, missing: str
) -> None:
    """The first row with no split is named by its line, blank lines counted, as an editor shows."""
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    records = [
        {"path": p.relative_to(tmp_path).as_posix(), "label": p.parent.name, "split": "train"}
        for p in sorted((tmp_path / "imgs").rglob("*.png"))
    ]
    for record in records[4:]:
        if missing == "absent":
            del record["split"]
        else:
            record["split"] = None if missing == "null" else "  "
    lines = [json.dumps(record) for record in records]
    lines.insert(2, "")  # a blank line: record 5 is on line 6
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as refused:
        load_data(str(tmp_path / "labels.jsonl"))
    message = str(refused.value)
    assert f"{tmp_path / 'labels.jsonl'}, row 6: empty 'split'" in message
    assert "use train, val or test, or remove the column" in message


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_label_file_with_every_split_given_is_honoured_file_by_file(
    tmp_path: Path, kind: str
) -> None:
    """Each image lands in the split its row names (test included), whatever a seeded split
    would have chosen; a header written `Path,Label,Split` by a spreadsheet reads the same."""
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=5)
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    chosen = {p: ("train", "valid", "test", "train", "train")[i % 5] for i, p in enumerate(files)}
    rows = [(p.relative_to(tmp_path).as_posix(), p.parent.name, chosen[p]) for p in files]
    if kind == "csv":
        lines = ["Path,Label,Split", *(",".join(row) for row in rows)]
    else:
        lines = [
            json.dumps(dict(zip(("path", "label", "split"), row, strict=True))) for row in rows
        ]
    (tmp_path / f"labels.{kind}").write_text("\n".join(lines) + "\n")
    splits = load_data(str(tmp_path / f"labels.{kind}"), val_fraction=0.5, seed=3)
    assert splits.test is not None
    for name, split in (("train", splits.train), ("valid", splits.val), ("test", splits.test)):
        assert sorted(split.images) == sorted(p for p in files if chosen[p] == name)
        assert [splits.class_names[label] for label in split.labels] == [
            Path(image).parent.name for image in split.images
        ]
