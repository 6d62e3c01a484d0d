"""Dia2 script parsing, text state machine and prefix entries, worked out step by step by hand.

The fake tokenizer makes tokens readable: ``[S1]`` -> 4, ``[S2]`` -> 5, every other character -> its code
point (a=97, b=98, c=99, d=100, e=101). Special text ids: new_word 2, pad 3, BOS 1, zero 7.
Outputs are written as (main, second) per step: the text fed at step t + 1 after the action of step t.
"""

from __future__ import annotations

import re

import pytest

from faster_dia.errors import InvalidInputError
from faster_dia.models.dia2.config import Dia2Config
from faster_dia.models.dia2.text import (
    Entry,
    TextStateMachine,
    TextTokenIds,
    parse_script,
    prefix_entries,
    speaker_token_ids,
)

NW, PAD, S1, S2 = 2, 3, 4, 5
a, b, c, d, e = 97, 98, 99, 100, 101
P = (PAD, PAD)  # a plain padding step on both streams


def encode(text: str) -> list[int]:
    tokens: list[int] = []
    for piece in text.split(" "):
        if piece == "[S1]":
            tokens.append(S1)
        elif piece == "[S2]":
            tokens.append(S2)
        else:
            tokens.extend(ord(ch) for ch in piece)
    return tokens


def parse(script: str, **kwargs) -> list[Entry]:
    return parse_script(script, encode, **kwargs)


def run(machine: TextStateMachine, actions: list[int], *, start: int = 0, forced: bool = False):
    return [machine.process(start + i, action, forced=forced) for i, action in enumerate(actions)]


# ----------------------------------------------------------------------------------------------- parse_script


def test_words_are_encoded_one_by_one_and_padding_is_their_length():
    assert parse("a bc") == [Entry([S1, a], "a", 2), Entry([b, c], "bc", 2)]


def test_speaker_tags_merge_with_the_next_word():
    assert parse("[S1] a [S2] b\n[S1] c") == [
        Entry([S1, a], "a", 2),
        Entry([S2, b], "b", 2),
        Entry([S1, c], "c", 2),
    ]


def test_a_script_starting_with_s2_still_starts_with_the_s1_token():
    assert parse("[S2] a") == [Entry([S1, S2, a], "a", 3)]


def test_a_trailing_speaker_tag_is_dropped():
    assert parse("a [S2]") == [Entry([S1, a], "a", 2)]


def test_apostrophes_and_colons_are_normalised():
    assert [x.text for x in parse("it\u2019s a:b")] == ["it's", "a", "b"]


def test_parentheses_are_kept_and_multi_word_tags_split():
    assert [x.text for x in parse("(laughs) ok (clears throat)")] == ["(laughs)", "ok", "(clears", "throat)"]


def test_breaks_become_tokenless_entries_of_round_seconds_times_12_5():
    assert parse('a <break time="0.4s"/> b') == [Entry([S1, a], "a", 2), Entry([], "", 5), Entry([b], "b", 1)]
    # glued to words, without the slash, without decimals
    assert parse('a<break time="1.2s">b<break time="2s"/>') == [
        Entry([S1, a], "a", 2), Entry([], "", 15), Entry([b], "b", 1), Entry([], "", 25),
    ]
    # a break that rounds to 0 steps adds nothing
    assert parse('a <break time="0s"/> <break time="0.02s"/> b') == [Entry([S1, a], "a", 2), Entry([b], "b", 1)]


def test_a_break_keeps_a_pending_speaker_tag():
    assert parse('a [S2] <break time="0.4s"/> b')[-1] == Entry([S2, b], "b", 2)


def test_padding_between_is_a_parameter():
    assert parse("a bc", padding_between=3) == [Entry([S1, a], "a", 4), Entry([b, c], "bc", 4)]


def test_speaker_ids_default_to_the_tags_single_token_else_new_word():
    assert speaker_token_ids(encode) == {"[S1]": S1, "[S2]": S2}

    def chars(text: str) -> list[int]:
        return [ord(ch) for ch in text if ch != " "]

    assert speaker_token_ids(chars) == {"[S1]": NW, "[S2]": NW}
    assert parse_script("a", chars) == [Entry([NW, a], "a", 2)]
    assert parse("a", speaker_ids={"[S1]": 40, "[S2]": 41}) == [Entry([40, a], "a", 2)]


def test_continuation_chunks_get_no_s1_and_may_be_empty():
    assert parse("b", continuation=True) == [Entry([b], "b", 1)]
    assert parse("  ", continuation=True) == []
    assert parse("a b") + parse("c", continuation=True) == parse("a b c")


@pytest.mark.parametrize("script", ["", "   ", "\n\t"])
def test_empty_scripts_are_errors(script):
    with pytest.raises(InvalidInputError, match="empty"):
        parse(script)


@pytest.mark.parametrize("script", ["[S1]", '[S1] <break time="1s"/>'])
def test_scripts_without_words_are_errors(script):
    with pytest.raises(InvalidInputError, match="no words"):
        parse(script)


@pytest.mark.parametrize("tag", ["[S3]", "[s1]", "[laughs]", "[]"])
def test_unknown_bracket_tags_are_errors(tag):
    with pytest.raises(InvalidInputError, match=re.escape(f"Unknown tag {tag}")):
        parse(f"[S1] a {tag} b")


@pytest.mark.parametrize(
    "tag", ['<break time="abc"/>', '<break time=".5s"/>', '<break time="1,5s"/>', "<break/>", '<BREAK time="1s"/>']
)
def test_malformed_break_tags_are_errors(tag):
    with pytest.raises(InvalidInputError, match="Malformed break tag"):
        parse(f"a {tag} b")


def test_breaks_longer_than_the_limit_are_errors():
    with pytest.raises(InvalidInputError, match="at most 10 s"):
        parse('a <break time="10.5s"/> b')
    assert parse('a <break time="10s"/> b')[1] == Entry([], "", 125)
    assert parse('a <break time="20s"/> b', max_break_seconds=30)[1] == Entry([], "", 250)


# -------------------------------------------------------------------------------------------- state machine


def test_fixed_text_of_step_zero_and_of_the_unconditional_branch():
    machine = TextStateMachine(parse("a"), config=Dia2Config())
    assert machine.initial_tokens == (1, PAD)  # BOS 1, not the tokenizer's 0
    assert machine.unconditional_tokens == (7, PAD)  # zero id on main, pad on second, every step
    assert TextTokenIds.from_config(Dia2Config()) == TextTokenIds()
    assert (machine.max_padding, machine.initial_padding, machine.second_stream_ahead) == (6, 2, 2)


def test_one_and_multi_token_words_forced_padding_and_the_end():
    machine = TextStateMachine(parse("a bc d"))
    assert run(machine, [1] * 12) == [
        P, P,  # t0-1 initial padding: the model's new-word actions are overridden
        (S1, NW),  # t2 "a" consumed: new_word goes to the second stream, its first token out at once
        (a, d),  # t3 the rest of "a"; second stream: the word two ahead ("d"), never the next one ("bc")
        P,  # t4 forced pad: a word's padding is its token count, one more step than feeding it takes
        (b, NW),  # t5 "bc"
        (c, PAD),  # t6
        P,  # t7 forced pad
        (d, NW),  # t8 "d", a one-token word
        P,  # t9 forced pad
        (PAD, NW),  # t10 no words left: end_step, new_word on the second stream once
        P,  # t11 plain padding from now on
    ]
    assert machine.transcript == [("a", 2), ("bc", 5), ("d", 8)]
    assert machine.consumption_times == [2, 5, 8]
    assert machine.end_step == 10 and machine.finished


def test_new_word_actions_are_dropped_while_a_word_is_fed():
    machine = TextStateMachine(parse("a bc"))
    assert run(machine, [0, 0, 0, 1, 1, 1, 0, 1, 1, 1]) == [
        P, P, (S1, NW), (a, PAD), P, (b, NW), (c, PAD), P, (PAD, NW), P,
    ]
    assert machine.transcript == [("a", 2), ("bc", 5)]
    assert machine.end_step == 8


def test_the_padding_budget_forces_a_new_word_after_six_pads():
    machine = TextStateMachine(parse("a b"))
    assert run(machine, [0] * 17) == [
        P, P,
        (S1, NW),  # t2: the initial padding is also the whole budget, so the first word comes at step 2
        (a, PAD), P, P, P, P, P,  # t3-8: six pad steps (the budget, reset to 6 by the word)
        (b, NW),  # t9: budget exhausted, new word although the model said pad
        P, P, P, P, P, P,  # t10-15
        (PAD, NW),  # t16: budget exhausted again, no words left: the end
    ]
    assert machine.transcript == [("a", 2), ("b", 9)]
    assert machine.end_step == 16


@pytest.mark.parametrize("initial, first", [(0, 0), (2, 2), (4, 4)])
def test_initial_padding_sets_the_first_word_step(initial, first):
    machine = TextStateMachine(parse("a"), initial_padding=initial)
    outputs = run(machine, [1] * (first + 1))
    assert outputs == [P] * first + [(S1, NW)]
    assert machine.transcript == [("a", first)]


def test_a_break_pads_for_its_length_and_does_not_refill_the_budget():
    machine = TextStateMachine(parse('a <break time="0.4s"/> b'))
    assert run(machine, [1] * 13) == [
        P, P, (S1, NW), (a, PAD), P,
        P,  # t5 the break is consumed: a pad step, not in the transcript
        P, P, P, P,  # t6-9 the rest of its 5 steps
        (b, NW),  # t10
        P, (PAD, NW),
    ]
    assert machine.transcript == [("a", 2), ("b", 10)]
    assert machine.consumption_times == [2, 5, 10]
    assert machine.end_step == 12


def test_the_lookahead_stream_carries_the_word_two_ahead():
    machine = TextStateMachine(parse("a b c d"))
    assert run(machine, [1] * 12) == [
        P, P,
        (S1, NW),  # t2 "a": lookahead queue <- "c"
        (a, c),  # t3
        P,  # t4
        (b, NW),  # t5 "b": lookahead queue <- "d"
        (PAD, d),  # t6 forced pad; the lookahead token still goes out
        (c, NW),  # t7 "c": nothing two ahead
        P,
        (d, NW),  # t9
        P,
        (PAD, NW),  # t11 end
    ]
    assert machine.end_step == 11


def test_after_the_end_every_step_is_padding_whatever_the_action():
    machine = TextStateMachine(parse("a"))
    assert run(machine, [1] * 6) == [P, P, (S1, NW), (a, PAD), P, (PAD, NW)]
    assert machine.end_step == 5
    assert run(machine, [1, 0, 2, 3, 9] * 4, start=6) == [P] * 20
    assert machine.end_step == 5


def test_text_ids_are_accepted_as_actions_and_anything_else_is_pad():
    machine = TextStateMachine(parse("a b"), initial_padding=0)
    assert run(machine, [NW, 0, 0, 9, NW]) == [(S1, NW), (a, PAD), P, P, (b, NW)]


def test_without_a_second_stream_both_outputs_are_the_same_token():
    machine = TextStateMachine(parse("a"), second_stream_ahead=0)
    assert run(machine, [1] * 7) == [P, P, (NW, NW), (S1, S1), (a, a), P, P]
    assert machine.end_step == 5  # no end marker without a second stream


def test_max_padding_is_a_parameter():
    machine = TextStateMachine(parse("a b"), max_padding=2)
    assert run(machine, [0] * 6) == [P, P, (S1, NW), (a, PAD), P, (b, NW)]


# ------------------------------------------------------------------------------------------ forced (prefix)


def test_forced_actions_bypass_forced_padding_and_the_budget():
    machine = TextStateMachine(parse("a b"))
    # t1: a new word during the initial forced padding; t8-9: pads with the budget spent stay pads
    assert run(machine, [0, 1] + [0] * 8, forced=True) == [P, (S1, NW), (a, PAD)] + [P] * 7
    assert machine.transcript == [("a", 1)]


def test_a_forced_new_word_is_dropped_while_the_word_is_fed():
    machine = TextStateMachine(parse("a b"), initial_padding=0)
    assert run(machine, [1, 1, 1], forced=True) == [(S1, NW), (a, PAD), (b, NW)]
    assert machine.transcript == [("a", 0), ("b", 2)]


def test_prefix_warm_up_then_free_generation():
    entries, steps = prefix_entries([("a", 0.0, 0.1), ("bc", 0.4, 0.7)], "[S1]", encode)
    assert entries == [Entry([S1, a], "a", 3), Entry([b, c], "bc", 3)]
    assert steps == [3, 7]  # start frames 1 and 5, minus 1, plus the reference's +3 for speaker 1
    machine = TextStateMachine(entries + parse("d"))  # the script's first word gets [S1] again
    warm_up = [1 if t in steps else 0 for t in range(9)]
    assert run(machine, warm_up, forced=True) == [
        P, P, P,
        (S1, NW),  # t3 "a": lookahead queue <- "[S1] d"
        (a, S1), (PAD, d), P,
        (b, NW),  # t7 "bc"
        (c, PAD),  # t8
    ]
    assert run(machine, [1] * 6, start=9) == [
        P, P,  # t9-10: the rest of "bc"'s padding (3) still holds
        (S1, NW), (d, PAD), P,  # t11 "d"
        (PAD, NW),  # t14 end
    ]
    assert machine.transcript == [("a", 3), ("bc", 7), ("d", 11)]


# ------------------------------------------------------------------------------------------- prefix entries


def test_prefix_steps_for_speaker_2_have_no_extra_offset():
    words = [("a", 0.0, 0.1), ("bc", 0.4, 0.7)]
    entries, steps = prefix_entries(words, "[S2]", encode, start_frame_offset=20)
    assert entries == [Entry([S2, a], "a", 3), Entry([b, c], "bc", 3)]
    assert steps == [20, 24]
    assert prefix_entries(words, "[S2]", encode, start_frame_offset=20, step_offset=3)[1] == [23, 27]
    assert prefix_entries(words, "[S1]", encode, step_offset=0)[1] == [0, 4]


def test_prefix_words_never_overlap_their_tokens():
    words = [("abcd", 0.0, 0.1), ("e", 0.16, 0.3)]
    entries, steps = prefix_entries(words, "[S1]", encode, step_offset=0)
    # "[S1] abcd" is 5 tokens: frames 1-5, so "e" (aligned at frame 2) starts at frame 7
    assert entries == [Entry([S1, a, b, c, d], "abcd", 5), Entry([e], "e", 1)]
    assert steps == [0, 6]


def test_prefix_words_without_times_are_spread_over_the_voiced_span():
    entries, steps = prefix_entries(["[S1] a", "bc"], "[S1]", encode, voiced_span=(0.0, 0.8))
    # a: 0.0-0.4 s, bc: 0.4-0.8 s
    assert entries == [Entry([S1, a], "a", 3), Entry([b, c], "bc", 4)]
    assert steps == [3, 7]


def test_prefix_entry_errors_and_empty_transcripts():
    assert prefix_entries([], "[S1]", encode) == ([], [])
    with pytest.raises(InvalidInputError, match="voiced span"):
        prefix_entries(["a"], "[S1]", encode)
    with pytest.raises(InvalidInputError, match="Invalid voiced span"):
        prefix_entries(["a"], "[S1]", encode, voiced_span=(1.0, 0.5))
    with pytest.raises(InvalidInputError, match="prefix speaker"):
        prefix_entries(["a"], "[S3]", encode, voiced_span=(0.0, 1.0))
    with pytest.raises(InvalidInputError, match="all be"):
        prefix_entries([("a", 0.0, 0.1), "b"], "[S1]", encode)


# ------------------------------------------------------------------------------------------------ streaming


def test_streaming_steps_only_with_enough_text_queued_and_matches_the_whole_script():
    actions = [1] * 12
    whole = run(TextStateMachine(parse("a b c d")), actions)

    machine = TextStateMachine(streaming=True)
    assert not machine.ready()
    machine.append(parse("a b"))
    assert not machine.ready()  # needs more than second_stream_ahead (2) entries
    with pytest.raises(RuntimeError, match="wait for more entries"):
        machine.process(0, 1)
    machine.append(parse("c", continuation=True))
    outputs = run(machine, actions[:2])
    assert machine.ready()
    outputs += run(machine, actions[2:3], start=2)  # "a" consumed: 2 entries left
    assert not machine.ready()
    machine.append(parse("d", continuation=True))
    outputs += run(machine, actions[3:5], start=3)  # "b" at t5 would leave 2 entries again
    machine.close()
    assert machine.ready()
    outputs += run(machine, actions[5:], start=5)
    assert outputs == whole
    assert machine.end_step == 11
    with pytest.raises(RuntimeError, match="closed"):
        machine.append(parse("e", continuation=True))
