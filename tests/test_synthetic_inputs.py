"""Synthetic inputs: the first line of a generation becomes a candidate input, parsed by the
task; malformed, held-out and duplicate candidates are dropped and counted by reason."""

from cdscale.tasks import Example, is_held_out
from cdscale.tasks.addition import Addition
from cdscale.teacher.synthetic_inputs import first_line, keep_inputs, line_break_token_ids


def test_first_line_of_a_continuation():
    assert first_line("2 9 + 5 7\nTarget:", finished=False) == "2 9 + 5 7"
    assert first_line("2 9 + 5 7", finished=True) == "2 9 + 5 7"  # ended (EOS) on its only line
    assert first_line("2 9 + 5", finished=False) is None  # cut off by the token cap inside the line


def test_the_engines_stop_at_every_token_that_holds_a_line_break(tiny_tokenizer, smollm2_tokenizer):
    for tokenizer in (tiny_tokenizer, smollm2_tokenizer):
        stop_ids = set(line_break_token_ids(tokenizer))
        # Against decoding each token on its own, on an even sample of the vocabulary.
        sample = set(range(0, len(tokenizer), max(1, len(tokenizer) // 3000)))
        assert stop_ids & sample == {i for i in sample if "\n" in tokenizer.decode([i])}
        # The tokens a line break is written with in running text.
        for text in ("2 9 + 5 7\nInput:", "What is the capital of France?\n\nAnswer"):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert any(i in stop_ids for i in ids)
            assert all(i not in stop_ids for i in tokenizer(text.split("\n")[0], add_special_tokens=False)["input_ids"])


def test_addition_parses_generated_problems_and_computes_the_gold():
    task = Addition(1, 2)
    x = task.parse_input(" 2 9 + 5 7 ")
    assert isinstance(x, Example) and x.input == "2 9 + 5 7" and x.gold == "8 6"
    assert task.teacher_demonstration(x).endswith("\n8 6")  # a parsed input is a full input
    assert task.parse_input("2 9 + 5 7 =") == "not a sum of two spaced numbers"
    assert task.parse_input("0 9 + 5") == "leading zero"
    assert task.parse_input("1 2 3 + 4") == "operand outside the task's digit range"
    prompt = task.input_generation_prompt([Example("1 + 2"), Example("3 4 + 5")])
    assert prompt == "Input:\n1 + 2\nInput:\n3 4 + 5\nInput:\n"


def test_duplicates_malformed_and_held_out_are_dropped_and_counted():
    task = Addition(1, 2)
    problems = [f"{a // 10} {a % 10} + {b}" for a in range(10, 100) for b in range(1, 10)]
    held = next(p for p in problems if is_held_out(Example(p), task.held_out_per_mille))
    train = [p for p in problems if not is_held_out(Example(p), task.held_out_per_mille)][:3]
    seen = {train[2]}  # drawn in an earlier pass
    lines = [train[0], train[1], train[0], " " + train[1], train[2], held, "x + y", None, "", "1 2 3 + 4"]
    kept, counts = keep_inputs(task, lines, seen)
    assert [x.input for x in kept] == train[:2]
    assert seen == set(train)
    assert counts == {
        "generated": 10,
        "duplicate": 3,
        "held_out": 1,
        "malformed: not a sum of two spaced numbers": 2,
        "malformed: cut off": 1,
        "malformed: operand outside the task's digit range": 1,
    }
    assert sum(v for k, v in counts.items() if k != "generated") + len(kept) == counts["generated"]
