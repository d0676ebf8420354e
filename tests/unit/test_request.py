"""parse_request: prompts, chat messages, the multi-turn context policy, and every kind of bad input."""

from __future__ import annotations

import pytest

from router_model.errors import InvalidRequestError
from router_model.request import CONTEXT_CHARS, CONTEXT_SEPARATOR, parse_request


def user(content):
    return {"role": "user", "content": content}


def test_prompt_string() -> None:
    p = parse_request("What is 2 + 2?")
    assert p.classifier_text == p.full_text == "What is 2 + 2?"
    assert not p.has_image


def test_single_user_message_string_and_parts() -> None:
    assert parse_request([user("Hello there")]).classifier_text == "Hello there"
    p = parse_request([user([{"type": "text", "text": "line one"}, {"type": "input_text", "text": "line two"}])])
    assert p.classifier_text == "line one\nline two"
    assert not p.has_image


@pytest.mark.parametrize("ptype", ["image_url", "input_image", "image"])
def test_image_part_sets_flag(ptype: str) -> None:
    p = parse_request([user([{"type": "text", "text": "what is in this picture?"}, {"type": ptype, "image_url": {"url": "x"}}])])
    assert p.has_image
    assert p.classifier_text == "what is in this picture?"


def test_image_only_has_no_classifier_text() -> None:
    p = parse_request([user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])])
    assert p.has_image and p.classifier_text == "" and p.full_text == ""


def test_system_and_assistant_turns_are_context_not_the_question() -> None:
    msgs = [
        {"role": "system", "content": "You are terse."},
        user("Write a haiku about rain."),
        {"role": "assistant", "content": "Rain on the tin roof..."},
        user("Now make it about snow."),
    ]
    p = parse_request(msgs)
    # The last user turn comes first, then earlier turns newest first.
    assert p.classifier_text.startswith("Now make it about snow." + CONTEXT_SEPARATOR)
    ctx = p.classifier_text.split(CONTEXT_SEPARATOR, 1)[1]
    assert ctx.index("Rain on the tin roof") < ctx.index("Write a haiku") < ctx.index("You are terse.")
    # Every message's text counts toward the full text (token length rule).
    for m in msgs:
        assert m["content"] in p.full_text


def test_trailing_assistant_turn_does_not_become_the_question() -> None:
    p = parse_request([user("Explain recursion."), {"role": "assistant", "content": "Recursion is..."}])
    assert p.classifier_text.startswith("Explain recursion.")


def test_no_user_turn_uses_last_text_message() -> None:
    p = parse_request([{"role": "system", "content": "sys prompt"}, {"role": "developer", "content": "dev prompt"}])
    assert p.classifier_text.startswith("dev prompt")


def test_context_is_bounded() -> None:
    long_turn = "x" * (5 * CONTEXT_CHARS)
    msgs = [user("first " + long_turn), {"role": "assistant", "content": "answer " + long_turn}, user("final question?")]
    p = parse_request(msgs)
    assert p.classifier_text.startswith("final question?")
    ctx = p.classifier_text.split(CONTEXT_SEPARATOR, 1)[1]
    assert len(ctx) <= CONTEXT_CHARS + 2  # joined with newlines
    assert len(p.full_text) > 10 * CONTEXT_CHARS  # the full request is still counted


def test_empty_user_turn_is_skipped_for_last_question() -> None:
    p = parse_request([user("real question"), user("   ")])
    assert p.classifier_text.startswith("real question")


def test_none_content_is_allowed_for_tool_call_turns() -> None:
    p = parse_request([user("call the tool"), {"role": "assistant", "content": None}, {"role": "tool", "content": "42"}])
    assert p.classifier_text.startswith("call the tool")


@pytest.mark.parametrize(
    "request_, field",
    [
        ("", "prompt"),
        ("   \n\t ", "prompt"),
        ([], "messages"),
        (b"bytes prompt", "request"),
        (bytearray(b"x"), "request"),
        (42, "request"),
        (None, "request"),
        ({"role": "user", "content": "hi"}, "request"),
        (["just a string"], "messages[0]"),
        ([42], "messages[0]"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([{"content": "hi"}], "messages[0].role"),
        ([user("ok"), {"role": "wizard", "content": "x"}], "messages[1].role"),
        ([user(42)], "messages[0].content"),
        ([user(b"bytes")], "messages[0].content"),
        ([user({"type": "text", "text": "hi"})], "messages[0].content"),
        ([user(["plain string part"])], "messages[0].content[0]"),
        ([user([{"type": "audio", "data": "x"}])], "messages[0].content[0].type"),
        ([user([{"text": "no type"}])], "messages[0].content[0].type"),
        ([user([{"type": "text"}])], "messages[0].content[0].text"),
        ([user([{"type": "text", "text": 5}])], "messages[0].content[0].text"),
        ([user("   "), {"role": "assistant", "content": ""}], "messages"),
        ([user([])], "messages"),
        ([{"role": "system", "content": None}], "messages"),
    ],
)
def test_bad_requests_name_the_field(request_, field: str) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(request_)
    assert exc.value.field == field
    assert isinstance(exc.value, ValueError)
    assert str(exc.value).startswith(field + ": ")
    assert exc.value.reason
