"""SPEC 7: request files are validated strictly; every mistake is named with its value."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairnd.errors import CODES, CairnError
from cairnd.spool.requests import (
    Admitted,
    CancelRequest,
    DeleteRequest,
    ForkRequest,
    LandRequest,
    RewindRequest,
    NewRequest,
    PromptRequest,
    admit,
    decode_json,
    validate_request,
)


def code_of(obj) -> str:
    with pytest.raises(CairnError) as info:
        validate_request(obj)
    return info.value.code


def test_valid_requests_of_every_kind():
    assert validate_request({"kind": "new", "repo": "/r"}) == NewRequest(repo="/r")
    assert validate_request({"kind": "new", "repo": "/r", "ref": "main", "title": "t", "agent": "a",
                             "in_place": True, "prompt": "p"}) == NewRequest("/r", "main", "t", "a", True, "p")
    assert validate_request({"kind": "prompt", "session": "s1", "text": "hi"}) == PromptRequest("s1", "hi")
    assert validate_request({"kind": "fork", "session": "s1", "user_message_index": 0}) == ForkRequest("s1", 0)
    assert validate_request({"kind": "cancel", "session": "s1"}) == CancelRequest("s1")
    assert validate_request({"kind": "rewind", "session": "s1", "user_message_index": 2, "prompt": "p"}) == \
        RewindRequest("s1", 2, "p")
    assert validate_request({"kind": "land", "session": "s1", "branch": "feat/x"}) == LandRequest("s1", "feat/x")
    assert validate_request({"kind": "land", "session": "s1", "branch": "b", "turn": 0, "message": "m",
                             "force": True}) == LandRequest("s1", "b", 0, "m", True)
    assert validate_request({"kind": "delete", "session": "s1", "keep_worktree": True}) == DeleteRequest("s1", True)


@pytest.mark.parametrize("obj, code", [
    ([], "bad_request"),
    ("fork", "bad_request"),
    ({}, "bad_request"),
    ({"kind": "explode"}, "bad_request"),
    ({"kind": 7}, "bad_request"),
    ({"kind": "cancel", "session": "s1", "sesion": "s1"}, "bad_request"),
    ({"kind": "cancel"}, "bad_request"),
    ({"kind": "fork", "session": "s1", "user_message_index": True}, "bad_request"),
    ({"kind": "fork", "session": "s1", "user_message_index": 1.0}, "bad_request"),
    ({"kind": "fork", "session": "s1", "user_message_index": "1"}, "bad_request"),
    ({"kind": "fork", "session": "s1", "user_message_index": None}, "bad_request"),
    ({"kind": "fork", "session": "s1", "user_message_index": 1e30}, "fork_out_of_range"),
    ({"kind": "fork", "session": "../s1", "user_message_index": 0}, "bad_request"),
    ({"kind": "fork", "session": "s/1", "user_message_index": 0}, "bad_request"),
    ({"kind": "fork", "session": "s" * 65, "user_message_index": 0}, "bad_request"),
    ({"kind": "fork", "session": "", "user_message_index": 0}, "bad_request"),
    ({"kind": "fork", "session": 12, "user_message_index": 0}, "bad_request"),
    ({"kind": "fork", "session": "s1", "user_message_index": 0, "title": 5}, "bad_request"),
    ({"kind": "fork", "session": "s1", "user_message_index": 0, "title": "a\nb"}, "bad_request"),
    ({"kind": "new", "repo": "relative/path"}, "bad_request"),
    ({"kind": "new", "repo": "/a\x00b"}, "bad_request"),
    ({"kind": "new", "repo": "/r", "ref": "--output=/tmp/x"}, "bad_request"),
    ({"kind": "new", "repo": "/r", "in_place": "yes"}, "bad_request"),
    ({"kind": "new", "repo": "/r", "in_place": 1}, "bad_request"),
    ({"kind": "prompt", "session": "s1", "text": ""}, "bad_request"),
    ({"kind": "prompt", "session": "s1", "text": ["a"]}, "bad_request"),
    ({"kind": "delete", "session": "s1", "keep_worktree": 0}, "bad_request"),
    ({"kind": "rewind", "session": "s1"}, "bad_request"),
    ({"kind": "rewind", "session": "s1", "user_message_index": 0, "title": "t"}, "bad_request"),
    ({"kind": "rewind", "session": "s1", "user_message_index": False}, "bad_request"),
    ({"kind": "rewind", "session": "s1", "user_message_index": 0.0}, "bad_request"),
    ({"kind": "rewind", "session": "s1", "user_message_index": 1e30}, "fork_out_of_range"),
    ({"kind": "rewind", "session": "s1", "user_message_index": 0, "prompt": ""}, "bad_request"),
    ({"kind": "rewind", "session": "s1", "user_message_index": 0, "prompt": None}, "bad_request"),
    ({"kind": "rewind", "session": "a/b", "user_message_index": 0}, "bad_request"),
    ({"kind": "land", "session": "s1"}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": "b", "into": "c"}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": ""}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": ["b"]}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": "-b"}, "bad_ref"),
    ({"kind": "land", "session": "s1", "branch": "a\nb"}, "bad_ref"),
    ({"kind": "land", "session": "s1", "branch": "b", "turn": -1}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": "b", "turn": True}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": "b", "turn": "1"}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": "b", "force": "yes"}, "bad_request"),
    ({"kind": "land", "session": "s1", "branch": "b", "message": 3}, "bad_request"),
])
def test_bad_requests_get_their_code(obj, code):
    assert code_of(obj) == code


def test_messages_name_the_field_and_the_value():
    with pytest.raises(CairnError) as info:
        validate_request({"kind": "fork", "session": "s1", "user_message_index": True})
    assert "user_message_index" in info.value.message and "true" in info.value.message
    with pytest.raises(CairnError) as info:
        validate_request({"kind": "cancel", "session": "s1", "sesion": "x"})
    assert "'sesion'" in info.value.message


@pytest.mark.parametrize("data, code", [
    (b"", "bad_json"),
    (b"{", "bad_json"),
    (b"\xff\xfe{\x00}\x00", "bad_json"),
    (b"[" * 100000, "bad_json"),
])
def test_undecodable_bytes(data, code):
    with pytest.raises(CairnError) as info:
        decode_json(data)
    assert info.value.code == code


def test_huge_integers_are_json_but_out_of_range():
    admitted = admit(b'{"kind":"fork","session":"s1","user_message_index":123456789012345678901234567890}', None)
    assert admitted.request is None and admitted.error.code == "fork_out_of_range"
    assert admitted.kind == "fork" and admitted.echo["user_message_index"] == float(123456789012345678901234567890)


def test_admit_takes_a_valid_request_and_echoes_it():
    admitted = admit(b'{"kind":"cancel","session":"s1"}', None)
    assert admitted == Admitted(CancelRequest(session="s1"), None, {"kind": "cancel", "session": "s1"}, "cancel")


def test_admit_refuses_what_the_spool_found_wrong_but_still_echoes_the_request():
    duplicate = CairnError("duplicate_id", "request id 'r1' was already used")
    admitted = admit(b'{"kind":"cancel","session":"s1"}', duplicate)
    assert admitted == Admitted(None, duplicate, {"kind": "cancel", "session": "s1"}, "cancel")
    not_json = admit(b"{", CairnError("bad_name", "bad name"))
    assert not_json.error.code == "bad_name" and not_json.echo is None and not_json.kind is None
    unread = admit(None, CairnError("not_a_file", "a fifo"))
    assert unread == Admitted(None, unread.error, None, None)


def test_admit_names_a_refused_requests_kind_when_it_has_one():
    admitted = admit(b'{"kind":"bogus","x":1}', None)
    assert admitted.error.code == "bad_request" and admitted.kind == "bogus"
    assert admitted.echo == {"kind": "bogus", "x": 1}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_documented_errors(data):
    admitted = admit(data, None)
    assert (admitted.request is None) != (admitted.error is None)
    assert admitted.error is None or admitted.error.code in CODES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"kind": st.sampled_from(["new", "prompt", "fork", "rewind", "land", "cancel",
                                                                    "delete", "x"])},
                             optional={"session": json_values | st.text(max_size=70), "repo": json_values,
                                       "text": json_values, "user_message_index": json_values,
                                       "title": json_values, "keep_worktree": json_values,
                                       "in_place": json_values, "ref": json_values, "extra": json_values,
                                       "prompt": json_values, "branch": json_values | st.text(max_size=20),
                                       "turn": json_values, "message": json_values, "force": json_values}))
def test_random_request_objects_only_ever_raise_documented_errors(obj):
    try:
        validate_request(obj)
    except CairnError as exc:
        assert exc.code in CODES


# --------------------------------------------------------------------------- attempts and check (SPEC 19)

FORK = {"kind": "fork", "session": "s1", "user_message_index": 1}


def test_valid_attempts_and_checks():
    from cairnd.spool.requests import CheckRequest
    assert validate_request({**FORK, "count": 3, "prompt": "p"}) == ForkRequest("s1", 1, prompt="p", count=3)
    assert validate_request({**FORK, "prompts": ["a", "b"], "agents": ["x", "y"], "check": ["pytest", "-q"]}) == \
        ForkRequest("s1", 1, prompts=("a", "b"), agents=("x", "y"), check=("pytest", "-q"))
    assert validate_request({**FORK, "agents": ["x"]}).tries == 1
    assert validate_request(FORK).tries is None
    assert validate_request({"kind": "check", "session": "s1", "command": ["make", ""], "timeout": 1.5}) == \
        CheckRequest("s1", ("make", ""), 1.5)
    assert validate_request({"kind": "check", "session": "s1", "command": ["true"]}).timeout == 600


@pytest.mark.parametrize("fields, named", [
    ({"count": 0}, "count 0 is out of range"),
    ({"count": 17}, "count 17 is out of range"),
    ({"count": True}, "count must be an integer, not true"),
    ({"count": 2, "prompts": ["a", "b"]}, "count 2 and prompts cannot go together"),
    ({"count": 2, "agents": ["x"]}, "count 2 and agents cannot go together"),
    ({"prompt": "p", "prompts": ["a"]}, "prompt and prompts cannot go together"),
    ({"prompts": ["a", "b"], "agents": ["x"]}, "prompts has 2 entries and agents 1"),
    ({"prompts": []}, "prompts must not be an empty list"),
    ({"agents": []}, "agents must not be an empty list"),
    ({"prompts": ["a", ""]}, "prompts[1] must not be empty"),
    ({"prompts": "a"}, 'prompts must be a list of strings, not "a"'),
    ({"agents": ["x", 3]}, "agents[1] must be a string, not 3"),
    ({"prompts": ["p"] * 17}, "prompts has 17 entries; the limit is 16"),
    ({"check": []}, "check must not be an empty list"),
    ({"check": "pytest -q"}, 'check must be a list of strings (an argv such as ["pytest", "-q"]), not "pytest -q"'),
    ({"check": [""]}, "check[0] must not be empty"),
])
def test_bad_attempts_are_bad_requests_naming_the_value(fields, named):
    with pytest.raises(CairnError) as info:
        validate_request({**FORK, **fields})
    assert info.value.code == "bad_request" and named in info.value.message, info.value.message


@pytest.mark.parametrize("fields, named", [
    ({"command": []}, "command must not be an empty list"),
    ({"command": "ls"}, 'command must be a list of strings (an argv such as ["pytest", "-q"]), not "ls"'),
    ({"command": ["ls", None]}, "command[1] must be a string, not null"),
    ({"command": ["ls"], "timeout": 0}, "timeout 0 is out of range"),
    ({"command": ["ls"], "timeout": "5"}, 'timeout must be a number of seconds, not "5"'),
    ({"command": ["ls"], "timeout": True}, "timeout must be a number of seconds, not true"),
    ({"command": ["ls"], "cwd": "/"}, "unknown field 'cwd' in a check request"),
    ({}, "a check request needs 'command'"),
])
def test_bad_checks_are_bad_requests_naming_the_value(fields, named):
    with pytest.raises(CairnError) as info:
        validate_request({"kind": "check", "session": "s1", **fields})
    assert info.value.code == "bad_request" and named in info.value.message, info.value.message
