"""The addition task: the scratchpad format, the extractor f, the scorer and the sampler D."""

import random
import re
import tracemalloc

import pytest

from cdscale.tasks import build_task
from cdscale.tasks.addition import Addition, scratchpad


def test_scratchpad_matches_the_paper_example():
    # Nye et al. 2021, as cited by the paper (section 3.3): 29 + 57.
    assert scratchpad(29, 57) == "<scratch>\n2 9 + 5 7 , C: 0\n2 + 5 , 6 C: 1\n, 8 6 C: 0\n0 8 6\n</scratch>"


def test_scratchpad_of_unequal_lengths_ends_in_the_sum():
    last_line = scratchpad(999, 5).splitlines()[-2]
    assert last_line.replace(" ", "") == "1004"


def test_extractor_strips_the_scratchpad():
    task = Addition(1, 3)
    completion = scratchpad(29, 57) + "\n8 6"
    assert task.extract_answer(completion) == "8 6"
    span = task.answer_span(completion)
    assert completion[span[0] : span[1]] == "8 6"


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("8 6", "8 6"),  # a direct answer has nothing to strip
        ("1 0 4\n", "1 0 4"),
        ("<scratch>\n2 9 + 5 7 , C: 0\n", None),  # scratchpad never closed
        ("<scratch>\n</scratch>\n", None),  # closed, but no answer after it
        ("<scratch>\n</scratch>\nxx 8 6", None),  # junk before the answer
        ("", None),
    ],
)
def test_extractor_edge_cases(completion, expected):
    assert Addition(1, 3).extract_answer(completion) == expected


def test_sampler_respects_the_digit_range_and_scorer_checks_the_sum():
    task = build_task("addition", {"min_digits": 2, "max_digits": 3})
    xs = task.sample_inputs(300, random.Random(0))
    for x in xs:
        a, b = x.meta["a"], x.meta["b"]
        assert 10 <= a < 1000 and 10 <= b < 1000
        assert task.score(x, " ".join(str(a + b))) == 1.0
        assert task.score(x, " ".join(str(a + b + 1))) == 0.0
        assert task.score(x, None) == 0.0
    assert {len(str(x.meta["a"])) for x in xs} == {2, 3}
    assert xs == task.sample_inputs(300, random.Random(0))  # reproducible from the seed


def test_same_length_draws_one_digit_count_for_both_operands_and_keeps_the_default_stream():
    same = build_task("addition", {"min_digits": 1, "max_digits": 8, "same_length": True})
    xs = same.sample_inputs(4000, random.Random(0))
    lengths = [(len(str(x.meta["a"])), len(str(x.meta["b"]))) for x in xs]
    assert all(la == lb for la, lb in lengths)
    counts = [sum(la == n for la, _ in lengths) for n in range(1, 9)]
    assert min(counts) > 400 and max(counts) < 600  # uniform over the 8 counts (500 each)
    # Independent lengths: both operands have 8 digits about 1 time in 64, not 1 in 8.
    independent = build_task("addition", {"min_digits": 1, "max_digits": 8}).sample_inputs(4000, random.Random(0))
    assert sum(len(str(x.meta["a"])) == len(str(x.meta["b"])) == 8 for x in independent) < 120
    # The first operand and the digit count come from the same draws in both modes.
    assert [x.meta["a"] for x in xs[:1]] == [x.meta["a"] for x in independent[:1]]
    assert same.parse_input("1 2 + 3 4").input == "1 2 + 3 4"
    assert same.parse_input("1 2 + 3") == "operands of different lengths"
    with pytest.raises(ValueError, match="same_length"):
        build_task("addition", {"same_length": "yes"})


def test_a_problems_file_is_the_distribution_and_each_problem_has_its_gold_scratchpad(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text('{"input": "4 1 + 3 7", "gold": "7 8"}\n{"input": "9 + 9", "gold": "1 8"}\n')
    task = build_task("addition", {"problems": str(path)})
    xs = task.sample_inputs(400, random.Random(0))
    assert {x.input for x in xs} == {"4 1 + 3 7", "9 + 9"}
    assert 150 < sum(x.input == "9 + 9" for x in xs) < 250  # uniform, repeats allowed
    assert xs == task.sample_inputs(400, random.Random(0))
    # The records task draws the same problems from the same seed: the Sc->Dir baseline on the
    # file (a records task) and Sc+Dir (this task) see one sequence of problems.
    records = build_task("records", {"path": str(path)}).sample_inputs(400, random.Random(0))
    assert [x.input for x in xs] == [x.input for x in records]
    by_input = {x.input: x for x in xs}
    assert task.teacher_demonstration(by_input["9 + 9"]) == scratchpad(9, 9) + "\n1 8"
    assert task.teacher_demonstration(by_input["4 1 + 3 7"]).endswith("</scratch>\n7 8")
    assert task.score(by_input["4 1 + 3 7"], "7 8") == 1.0


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"input": "4 1 + 3 7", "gold": "7 9"}', "line 2: gold '7 9' is not the sum '7 8'"),
        ('{"input": "41 + 37", "gold": "78"}', "line 2: input '41 + 37': not a sum of two spaced numbers"),
        ('{"input": "0 4 + 3", "gold": "7"}', "line 2: input '0 4 + 3': leading zero"),
        ('{"input": "4 1 + 3 7"}', "line 2: missing field 'gold'"),
    ],
)
def test_a_bad_problem_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "problems.jsonl"
    path.write_text('{"input": "1 + 2", "gold": "3"}\n' + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} {message}")):
        build_task("addition", {"problems": str(path)})
    with pytest.raises(ValueError, match="max_digits do not apply"):
        build_task("addition", {"problems": str(path), "max_digits": 2})


def test_templates_differ_only_in_what_they_ask_for():
    task = Addition(1, 3)
    [x] = task.sample_inputs(1, random.Random(1))
    assert task.teacher_prompt(x) == f"Input:\n{x.input}\nTarget:\n"
    assert task.student_prompt(x) == f"Input:\n{x.input}\nAnswer:\n"
    assert task.extract_answer(task.teacher_demonstration(x)) == x.gold


def test_unknown_task_and_bad_options_name_the_field():
    with pytest.raises(ValueError, match="task.name"):
        build_task("nope")
    with pytest.raises(ValueError, match="task.options"):
        build_task("addition", {"digits": 3})
    with pytest.raises(ValueError, match="task.options"):
        build_task("addition", {"min_digits": 4, "max_digits": 2})


def test_held_out_partition_keeps_eval_and_training_apart():
    from cdscale.config import ConfigError
    from cdscale.tasks import is_held_out, sample_where

    task = Addition(1, 3)
    evals = sample_where(task, 300, random.Random(0), held_out=True, distinct=True)
    train = sample_where(task, 3000, random.Random(0), held_out=False)
    assert len({x.input for x in evals}) == 300 and all(is_held_out(x, task.held_out_per_mille) for x in evals)
    assert not {x.input for x in evals} & {x.input for x in train}
    share = sum(is_held_out(x, task.held_out_per_mille) for x in task.sample_inputs(5000, random.Random(1))) / 5000
    assert 0.05 < share < 0.15  # about a tenth of D is held out
    with pytest.raises(ConfigError, match="input space is too small"):
        sample_where(Addition(1, 1), 50, random.Random(0), held_out=True, distinct=True, what="data.num_eval")
    # A count far beyond the space fails once 100,000 draws found nothing new (before
    # 2026-12-05: after 100 draws per input wanted, here 10^8, all drawn into memory at once).
    tracemalloc.start()
    with pytest.raises(ConfigError, match=r"found only \d+ of 1000000 .* after 1\d{5} draws"):
        sample_where(Addition(1, 1), 10**6, random.Random(0), held_out=True, distinct=True, what="data.num_eval")
    assert tracemalloc.get_traced_memory()[1] < 50 * 2**20  # 10^6 inputs at once would be about 400 MiB
    tracemalloc.stop()
    # Drawn in batches of 10,000: the inputs of one pass over the stream, filtered
    many = sample_where(task, 12_000, random.Random(2), held_out=False)
    stream = task.sample_inputs(20_000, random.Random(2))
    assert [x.input for x in many] == [x.input for x in stream if not is_held_out(x, task.held_out_per_mille)][:12_000]


def test_arithmetic_tasks_for_the_task_id_experiment():
    from cdscale.tasks import Example

    max_task = build_task("arithmetic", {"operation": "max", "min_digits": 2, "max_digits": 2, "task_id": "0"})
    x = max_task.sample_inputs(1, random.Random(0))[0]
    assert len(x.input.split(" , ")[0].split()) == 2
    assert max_task.teacher_prompt(x) == f"Task: max\nInput:\n{x.input}\nAnswer:\n"
    assert max_task.student_prompt(x) == f"[0]\nInput:\n{x.input}\nAnswer:\n"
    # An input from another task's D (mixed inputs) is scored by this task's operation.
    other = Example(input="1 2 3 , 4 5 6", gold="1 2 3")
    assert max_task.score(other, "4 5 6") == 1.0 and max_task.score(other, "1 2 3") == 0.0
    assert max_task.teacher_demonstration(other) == "4 5 6"
    assert max_task.extract_answer(" 4 5 6\nmore") == "4 5 6" and max_task.extract_answer("none") is None
    with pytest.raises(Exception, match="operation"):
        build_task("arithmetic", {"operation": "sum"})


def test_bootstrap_batches_that_learn_inputs_hold_lists_of_inputs_in_the_few_shot_layout(tiny_tokenizer):
    """`cdscale bootstrap --learn-inputs`: every fourth sequence is 1-4 inputs as the synthetic-D
    prompt lays them out, learned whole; the others are unchanged demonstrations."""
    import random

    from cdscale.bootstrap import demonstration_batch

    task = build_task("addition", {"min_digits": 1, "max_digits": 3})
    plain = demonstration_batch([task], tiny_tokenizer, 8, random.Random(1))
    batch = demonstration_batch([task], tiny_tokenizer, 8, random.Random(1), learn_inputs=True)
    for i in range(8):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
        learned = batch["labels"][i] != -100
        if i % 4 == 3:
            lines = text.strip("\n").split("\n")
            assert lines[0::2] == ["Input:"] * (len(lines) // 2) and 1 <= len(lines) // 2 <= 4
            assert all(task.parse_input(line) != "not a sum of two spaced numbers" for line in lines[1::2])
            assert learned.sum() == len(ids) - 1  # every token after the first
        else:
            assert "Target:" in text and learned.sum() < len(ids) - 1  # the completion only
    assert (plain["labels"][0] != -100).sum() == (batch["labels"][0] != -100).sum()
