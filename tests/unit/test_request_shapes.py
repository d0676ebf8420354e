"""The newer message shapes the router reads (router_model/request.py): tool calls and results,
`developer`, `input_text` / `input_image`, Anthropic content blocks, Responses API items."""

from __future__ import annotations

import pytest

from router_model.errors import InvalidRequestError
from router_model.request import CONTEXT_SEPARATOR, is_tool_result_turn, parse_request

ASK = {"role": "user", "content": "What is the weather in Paris?"}
CHAT_CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
]}
CHAT_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}
ANTHROPIC_CALL = {"role": "assistant", "content": [
    {"type": "text", "text": "Let me look."},
    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
]}
ANTHROPIC_RESULT = {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18 C and sunny"}]},
]}


def test_chat_tool_call_and_result_are_read() -> None:
    p = parse_request([ASK, CHAT_CALL, CHAT_RESULT])
    assert p.classifier_text == ASK["content"]  # the user's question decides; later turns are not its context
    assert 'get_weather({"city": "Paris"})' in p.full_text and "18 C and sunny" in p.full_text
    assert not p.has_image


def test_tool_call_without_content_and_no_user_text_is_still_routable() -> None:
    p = parse_request([CHAT_CALL, CHAT_RESULT])
    assert p.classifier_text.startswith("18 C and sunny")


def test_developer_role_and_input_text_parts() -> None:
    p = parse_request([
        {"role": "developer", "content": [{"type": "input_text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Translate this sentence."}]},
    ])
    assert p.classifier_text.startswith("Translate this sentence.")
    assert "Answer in French." in p.full_text


@pytest.mark.parametrize("part", [
    {"type": "input_image", "image_url": "https://example.com/a.png"},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
])
def test_image_parts_set_has_image(part: dict) -> None:
    p = parse_request([{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}])
    assert p.has_image and p.classifier_text == "What is this?"


def test_anthropic_blocks_tool_use_and_nested_tool_result() -> None:
    p = parse_request([{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                       ASK, ANTHROPIC_CALL, ANTHROPIC_RESULT])
    # a user turn of tool results only is not the question: the last real user turn still leads
    assert p.classifier_text.startswith(ASK["content"] + CONTEXT_SEPARATOR)
    assert "Let me look." in p.full_text and 'get_weather({"city": "Paris"})' in p.full_text
    assert "18 C and sunny" in p.full_text and "Be brief." in p.full_text


def test_anthropic_tool_result_with_an_image_and_string_content() -> None:
    result = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "plain text result"},
        {"type": "tool_result", "tool_use_id": "u", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/chart.png"}}]},
    ]}
    p = parse_request([ASK, ANTHROPIC_CALL, result])
    assert p.has_image and "plain text result" in p.full_text


def test_thinking_and_document_blocks_are_skipped_not_refused() -> None:
    p = parse_request([ASK, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "x"}, {"type": "text", "text": "Done."}]}])
    assert "hmm" not in p.full_text and "Done." in p.full_text


def test_responses_items_function_call_and_output() -> None:
    p = parse_request([
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
    ])
    assert p.classifier_text.startswith("Weather in Paris?")
    assert "get_weather" in p.full_text and "18 C" in p.full_text


@pytest.mark.parametrize(("messages", "expected"), [
    ([ASK, CHAT_CALL, CHAT_RESULT], True),
    ([ASK, ANTHROPIC_CALL, ANTHROPIC_RESULT], True),
    ([ASK, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
      {"type": "function_call_output", "call_id": "c", "output": "x"}], True),
    ([ASK], False),
    ([ASK, CHAT_CALL, CHAT_RESULT, {"role": "user", "content": "thanks"}], False),
    ([{"role": "user", "content": [*ANTHROPIC_RESULT["content"], {"type": "text", "text": "and now?"}]}], False),
    ([{"role": "wizard"}], False),
    ("a prompt", False),
])
def test_is_tool_result_turn(messages, expected: bool) -> None:
    assert is_tool_result_turn(messages) is expected


def test_unknown_part_types_still_fail_naming_the_field() -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request([{"role": "user", "content": [{"type": "tool_result", "content": [{"type": "hologram"}]}]}])
    assert exc.value.field == "messages[0].content[0].content[0].type"


def test_a_tool_call_with_object_arguments_and_no_name() -> None:
    p = parse_request([ASK, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": {"a": 1}}}]}])
    assert '({"a": 1})' in p.full_text
