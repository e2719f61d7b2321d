"""VQAv2 record files read as plain JSON (no Arrow round trip), with inconsistent records refused."""

import json

import pytest

from mmllm.errors import DataError
from mmllm_vqa.data import load_json_records


def write(tmp_path, records, field="questions"):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({field: records}))
    return path


def test_records_are_the_files_own(tmp_path):
    records = [
        {"question_id": 1, "image_id": 7, "question": "what?"},
        {"question_id": 2, "image_id": 8, "question": "why?"},
    ]
    assert load_json_records(write(tmp_path, records), "questions") == records


@pytest.mark.parametrize(
    "records,message",
    [
        ([{"question_id": 1}, {"question_id": "2"}], r"item 1 has 'question_id' of type str, earlier items number"),
        ([{"question_id": 1}, ["not", "an", "object"]], r"item 1 is a list, not an object"),
    ],
)
def test_inconsistent_records_are_refused(tmp_path, records, message):
    with pytest.raises(DataError, match=message):
        load_json_records(write(tmp_path, records), "questions")


def test_wrong_layout_is_refused(tmp_path):
    with pytest.raises(DataError, match="expected a JSON object with a list under 'questions'"):
        load_json_records(write(tmp_path, [], field="annotations"), "questions")
