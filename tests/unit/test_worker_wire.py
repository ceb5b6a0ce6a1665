"""Rows on the gateway/worker wire come back as exactly the dicts JSON decoding gave, whatever their values."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.serving.model import RequestInvalid
from caravan.serving.wire import decode_rows, encode_rows
from caravan.serving.worker_client import PredictorClient, RowsRefused, refusal
from caravan.v1 import predict_pb2

any_text = st.text(st.characters(exclude_categories=()))  # lone surrogates too: JSON's "\ud800" gives them
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = json_scalars | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                  max_size=2)
rows = st.lists(st.dictionaries(st.text(st.characters(exclude_categories=()), max_size=8), json_values, max_size=6),
                max_size=5)


def over_the_wire(request: predict_pb2.PredictRequest) -> list[dict]:
    return decode_rows(predict_pb2.PredictRequest.FromString(request.SerializeToString()))


def same(a: object, b: object) -> bool:
    """Equal values of the same types (NaN equal to NaN; lists and dicts only by type: the wire keeps no more)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b  # type: ignore[arg-type]
    if isinstance(a, (list, dict)):
        return True
    return a == b


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(rows)
def test_rows_come_back_with_the_same_names_values_and_types(given_rows):
    back = over_the_wire(encode_rows(given_rows, "r-1"))
    assert len(back) == len(given_rows)
    for sent, got in zip(given_rows, back, strict=True):
        sendable = {k: v for k, v in sent.items() if utf8(k)}
        assert {k: v for k, v in got.items() if k in sendable}.keys() == sendable.keys()
        assert len(got) == len(sent)  # a name with a lone surrogate arrives escaped, never dropped
        for name, value in sendable.items():
            if isinstance(value, str) and not utf8(value):
                assert isinstance(got[name], str)
            else:
                assert same(value, got[name]), (name, value, got[name])


def test_rows_of_floats_travel_without_kinds_and_json_rows_round_trip():
    body = json.loads('[{"a": 0.5, "b": -1e300}, {"a": 1, "b": null, "c": true, "d": "x", "e": [1], "f": {}}]')
    request = encode_rows(body)
    assert request.rows[0].kinds == b"" and not request.rows[0].texts
    assert request.rows[1].kinds == b"inbsld"
    back = over_the_wire(request)
    assert back[0] == body[0]
    assert [type(v).__name__ for v in back[1].values()] == ["int", "NoneType", "bool", "str", "list", "dict"]


def test_rows_with_the_same_names_carry_them_once_and_come_back_whole():
    body = [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}, {}, {"b": 5.0, "a": 6.0}, {"b": 7.0, "a": True}]
    request = encode_rows(body)
    assert [list(row.names) for row in request.rows] == [["a", "b"], [], [], ["b", "a"], []]
    back = over_the_wire(request)
    assert back == body and [list(row) for row in back] == [list(row) for row in body]  # same keys, same order
    orphan = predict_pb2.PredictRequest(rows=[predict_pb2.Row(numbers=[1.0])])  # no row before to take names from
    with pytest.raises(RequestInvalid, match=r"^row 0 is malformed: 0 names, 1 numbers"):
        decode_rows(orphan)


def test_integers_beyond_a_double_keep_every_digit():
    (row,) = over_the_wire(encode_rows([{"n": 2**53 + 1, "m": -(10**40)}]))
    assert row == {"n": 2**53 + 1, "m": -(10**40)} and type(row["n"]) is int


@pytest.mark.parametrize("row", [
    predict_pb2.Row(names=["a", "b"], numbers=[1.0]),
    predict_pb2.Row(names=["a"], numbers=[1.0], kinds=b"fi"),
    predict_pb2.Row(names=["a"], numbers=[1.0], kinds=b"s"),
    predict_pb2.Row(names=["a"], numbers=[1.0], kinds=b"I", texts=["12x"]),
    predict_pb2.Row(names=["a"], numbers=[1.0], kinds=b"?"),
])
def test_a_malformed_row_is_refused_naming_it(row):
    request = predict_pb2.PredictRequest(rows=[predict_pb2.Row(names=["a"], numbers=[0.0]), row])
    with pytest.raises(RequestInvalid, match=r"^row 1 is malformed") as caught:
        decode_rows(request)
    assert caught.value.row == 1


def test_a_row_that_is_no_object_is_refused_by_the_client_as_serve_refuses_it():
    client = PredictorClient("127.0.0.1:9")  # never reached: the rows are refused before anything is sent
    try:
        with pytest.raises(RowsRefused) as caught:
            client.predict([{"a": 1.0}, [1, 2]], "r", 0.5)
    finally:
        client.close()
    assert caught.value.code().name == "INVALID_ARGUMENT"
    assert refusal(caught.value) == ("row 1 must be a JSON object of feature values, got list", None, 1)


def test_a_lone_surrogate_from_json_travels_escaped():
    body = json.loads('[{"\\ud800x": 1.0, "s": "\\udfff"}]')
    (row,) = over_the_wire(encode_rows(body))
    assert row == {"\\ud800x": 1.0, "s": "\\udfff"}  # escaped text: still an unknown name, still a string
